"""Idempotency records on real Redis: first result replayed, retryable answers released,
concurrent duplicates told to come back, reused ids with other data refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from wsmanager.adapters.redis import RedisStateStore
from wsmanager.core.errors import InvalidEvent
from wsmanager.functions.dedupe import Answer, Dedupe, InProgress, dedupe_key, is_final

__all__: list[str] = []


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStateStore]:
    opened = RedisStateStore(redis_url, key_prefix=f"wsm-test-{uuid.uuid4().hex}:")
    try:
        yield opened
    finally:
        await opened.drop_namespace()
        await opened.close()


def counting(status: int = 200) -> tuple[list[int], Callable[[], Awaitable[Answer]]]:
    calls: list[int] = []

    async def action() -> Answer:
        calls.append(1)
        return Answer.of_json(status, {"n": len(calls)})

    return calls, action


async def test_first_final_answer_is_replayed(store: RedisStateStore) -> None:
    dedupe = Dedupe(store)
    calls, action = counting(201)
    first = await dedupe.run(("/src", "1"), "fp", action)
    again = await dedupe.run(("/src", "1"), "fp", action)
    assert len(calls) == 1
    assert again == first and first.status == 201
    assert json.loads(again.body) == {"n": 1}
    other = await dedupe.run(("/src", "2"), "fp", action)
    assert json.loads(other.body) == {"n": 2}


async def test_the_record_sits_under_the_dedupe_key_with_a_ttl(store: RedisStateStore) -> None:
    await Dedupe(store, result_ttl=120).run(("s", "i"), "fp", counting()[1])
    key = dedupe_key("s", "i")
    assert (
        key.startswith("websocketmanager.dedupe.")
        and len(key) == len("websocketmanager.dedupe.") + 64
    )
    assert await store.get(key) is not None
    ttl = await store._client.pttl(store._prefix + key)  # the TTL itself
    assert 0 < ttl <= 120_000


@pytest.mark.parametrize("status", [500, 503, 409, 429, 504])
async def test_retryable_answers_are_not_kept(store: RedisStateStore, status: int) -> None:
    dedupe = Dedupe(store)
    calls, action = counting(status)
    await dedupe.run(("s", "r"), "fp", action)
    await dedupe.run(("s", "r"), "fp", action)
    assert len(calls) == 2
    assert await store.get(dedupe_key("s", "r")) is None


async def test_an_exception_releases_the_claim(store: RedisStateStore) -> None:
    dedupe = Dedupe(store)

    async def boom() -> Answer:
        raise RuntimeError("holder crashed")

    with pytest.raises(RuntimeError):
        await dedupe.run(("s", "x"), "fp", boom)
    assert await store.get(dedupe_key("s", "x")) is None


async def test_concurrent_duplicate_is_told_to_retry(store: RedisStateStore) -> None:
    dedupe = Dedupe(store)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow() -> Answer:
        entered.set()
        await release.wait()
        return Answer.of_json(200, {"ok": True})

    first = asyncio.create_task(dedupe.run(("s", "c"), "fp", slow))
    await entered.wait()
    with pytest.raises(InProgress) as caught:
        await dedupe.run(("s", "c"), "fp", slow)
    assert caught.value.http_status == 503 and caught.value.retryable
    release.set()
    assert (await first).status == 200
    assert (await dedupe.run(("s", "c"), "fp", slow)).status == 200


async def test_reused_id_with_other_data_is_refused(store: RedisStateStore) -> None:
    dedupe = Dedupe(store)
    await dedupe.run(("s", "d"), "fp-a", counting()[1])
    with pytest.raises(InvalidEvent):
        await dedupe.run(("s", "d"), "fp-b", counting()[1])


def test_final_statuses() -> None:
    assert all(is_final(s) for s in (200, 201, 204, 400, 404, 413))
    assert not any(is_final(s) for s in (409, 412, 429, 500, 503, 504))
