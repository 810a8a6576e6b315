"""The Dapr state store adapter and its resilience, through the real SDK (``dapr.aio``), against
the sidecar stand-in on real Redis (real daprd: ``test_dapr_real_daprd.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.support.dapr_sidecar import (
    Counting,
    DaprSidecar,
    SidecarStateStore,
    fast_resilience,
    make_dapr_store,
    new_dapr_prefix,
)
from wsmanager.adapters.dapr_state import ABSENT_ETAG, SUPERSEDED, DaprStateStore
from wsmanager.adapters.resilience import CircuitBreaker
from wsmanager.core.errors import ConcurrencyConflict, InvalidArgument, StoreUnavailable
from wsmanager.ports import ABSENT, Delete, Etag, Upsert


@pytest.fixture(scope="module")
def sidecar(redis_url: str) -> Iterator[DaprSidecar]:
    with DaprSidecar(redis_url) as car:
        car.point_sdk_here()
        yield car


@pytest.fixture(autouse=True)
def _sdk_points_at_sidecar(sidecar: DaprSidecar) -> None:
    """The SDK's settings are global; tests that start their own sidecar move them."""
    sidecar.point_sdk_here()


@pytest.fixture
async def store(sidecar: DaprSidecar) -> AsyncIterator[SidecarStateStore]:
    opened = await make_dapr_store(sidecar, new_dapr_prefix(), resilience=fast_resilience())
    yield opened
    opened.drop_namespace()
    await opened.close()


async def test_roundtrip_returns_the_etag_that_get_sees(store: DaprStateStore) -> None:
    assert await store.get("k") is None
    etag = await store.save("k", b"one")
    got = await store.get("k")
    assert got is not None and (got.value, got.etag) == (b"one", etag)
    assert await store.save("k", b"two") != etag  # last write wins without expect
    assert (await store.get("k")).value == b"two"  # type: ignore[union-attr]
    await store.save("empty", b"")
    assert (await store.get("empty")).value == b""  # type: ignore[union-attr]  # present, empty


async def test_stale_or_unparseable_etag_is_a_conflict(store: DaprStateStore) -> None:
    first = await store.save("k", b"one")
    second = await store.save("k", b"two", expect=first)
    for bad in (first, Etag("not-a-number")):
        with pytest.raises(ConcurrencyConflict):
            await store.save("k", b"three", expect=bad)
    assert (await store.get("k")).etag == second  # type: ignore[union-attr]


async def test_first_write_fails_on_any_existing_key(store: DaprStateStore) -> None:
    await store.save("lww", b"written without first-write")
    with pytest.raises(ConcurrencyConflict):  # dapr/components-contrib#1010 would overwrite
        await store.save("lww", b"mine", expect=ABSENT)
    etag = await store.save("new", b"first", expect=ABSENT)
    with pytest.raises(ConcurrencyConflict):
        await store.save("new", b"second", expect=ABSENT)
    assert (await store.get("new")).etag == etag  # type: ignore[union-attr]  # unchanged
    await store.delete("new")
    await store.save("new", b"again", expect=ABSENT)


async def test_why_absent_uses_an_etag_not_first_write_concurrency(sidecar: DaprSidecar) -> None:
    """Quirks of Dapr's Redis store the adapter avoids (documented in dapr_state)."""
    plain = await make_dapr_store(
        sidecar, new_dapr_prefix(), resilience=fast_resilience(), absent_etag=None
    )
    try:
        await plain.save("k", b"last-write")
        await plain.save("k", b"overwritten!", expect=ABSENT)  # first-write, no ETag: overwrites
        assert (await plain.get("k")).value == b"overwritten!"  # type: ignore[union-attr]
        # ... and leaves a sticky flag: ETag-less saves of that key are refused from now on.
        with pytest.raises(ConcurrencyConflict):
            await plain.save("k", b"last-write again")
        fields, _ = sidecar.redis_state(plain._prefix + "k")
        assert b"first-write" in fields
    finally:
        plain.drop_namespace()
        await plain.close()
    assert ABSENT_ETAG.isdigit()


async def test_save_overwritten_before_its_read_back(sidecar: DaprSidecar) -> None:
    """Dapr's SaveState returns no ETag; if another write lands before the adapter reads it
    back, ``save`` returns SUPERSEDED, which every later CAS (adapter check or daprd) refuses."""
    store = await make_dapr_store(
        sidecar, new_dapr_prefix(), resilience=fast_resilience(), check_missing=False
    )
    client = store._client
    real_save = client.save_state

    async def save_then_someone_else(name: str, key: str, value: bytes, **kw: Any) -> Any:
        response = await real_save(name, key, value, **kw)
        await real_save(name, key, b"someone else's")
        return response

    try:
        client.save_state = save_then_someone_else
        assert await store.save("k", b"mine") == SUPERSEDED
        client.save_state = real_save
        with pytest.raises(ConcurrencyConflict):  # refused by daprd itself (ABORTED)
            await store.save("k", b"x", expect=SUPERSEDED)
        with pytest.raises(ConcurrencyConflict):
            await store.delete("k", expect=SUPERSEDED)
        assert (await store.get("k")).value == b"someone else's"  # type: ignore[union-attr]
    finally:
        client.save_state = real_save
        store.drop_namespace()
        await store.close()


async def test_delete_with_etag(store: DaprStateStore) -> None:
    first = await store.save("k", b"one")
    second = await store.save("k", b"two")
    with pytest.raises(ConcurrencyConflict):
        await store.delete("k", expect=first)
    assert await store.get("k") is not None
    await store.delete("k", expect=second)
    assert await store.get("k") is None
    await store.delete("k")  # idempotent without expect
    with pytest.raises(ConcurrencyConflict):  # port: an ETag for a missing key conflicts
        await store.delete("k", expect=second)


async def test_etag_on_a_deleted_key(sidecar: DaprSidecar, store: DaprStateStore) -> None:
    etag = await store.save("k", b"one")
    await store.delete("k")
    with pytest.raises(ConcurrencyConflict):
        await store.save("k", b"resurrected", expect=etag)
    assert await store.get("k") is None
    # Without the adapter's read-first check, Dapr-on-Redis would accept it (recreate the key).
    raw = await make_dapr_store(
        sidecar, store._prefix, resilience=fast_resilience(), check_missing=False
    )
    try:
        await raw.save("k", b"resurrected", expect=etag)
        assert (await raw.get("k")).value == b"resurrected"  # type: ignore[union-attr]
    finally:
        await raw.close()


async def test_bulk_get(store: DaprStateStore) -> None:
    a = await store.save("a", b"A")
    b = await store.save("b", b"")
    got = await store.bulk_get(["a", "missing", "b"])
    assert {k: (v.value, v.etag) for k, v in got.items()} == {"a": (b"A", a), "b": (b"", b)}
    assert await store.bulk_get([]) == {}


async def test_transaction_is_all_or_nothing(store: DaprStateStore) -> None:
    a = await store.save("a", b"A")
    await store.save("b", b"B")
    stale = await store.save("c", b"C")
    await store.save("c", b"C2")
    with pytest.raises(ConcurrencyConflict):
        await store.transact([Upsert("a", b"A2", expect=a), Delete("b"), Upsert("c", b"x", stale)])
    with pytest.raises(ConcurrencyConflict):
        await store.transact([Upsert("a", b"A2", expect=a), Upsert("b", b"x", expect=ABSENT)])
    got = await store.bulk_get(["a", "b", "c"])
    assert [got[k].value for k in "abc"] == [b"A", b"B", b"C2"]
    await store.transact(
        [Upsert("a", b"A2", expect=a), Delete("b"), Upsert("d", b"D", expect=ABSENT)]
    )
    got = await store.bulk_get(["a", "b", "d"])
    assert {k: v.value for k, v in got.items()} == {"a": b"A2", "d": b"D"}


async def test_transaction_conflict_seen_only_by_the_runtime(store: DaprStateStore) -> None:
    """A writer slipping in after the adapter's check: daprd answers INTERNAL, the adapter
    still reports a conflict (not an outage to retry)."""
    etag = await store.save("a", b"A")
    current = await store.bulk_get(["a"])
    await store.save("a", b"theirs")

    async def stale_view(keys: Any) -> Any:
        return current

    store.bulk_get = stale_view  # type: ignore[method-assign]
    with pytest.raises(ConcurrencyConflict, match="failed to set key"):
        await store.transact([Upsert("a", b"mine", expect=etag)])
    assert store.breaker_state == "closed"


async def test_ttl_rounds_up_and_persist_clears_it(
    sidecar: DaprSidecar, store: SidecarStateStore
) -> None:
    await store.save("k", b"v", ttl_seconds=0.2)
    assert sidecar.redis_state(store._prefix + "k")[1] == 1  # whole seconds, rounded up
    await store.save("k", b"v2")  # no ttl: Dapr would keep the old TTL; the adapter persists
    assert sidecar.redis_state(store._prefix + "k")[1] == -1
    await store.transact([Upsert("t", b"v", ttl_seconds=1)])
    await store.save("k", b"v3", ttl_seconds=1)
    await asyncio.sleep(1.3)
    assert await store.bulk_get(["k", "t"]) == {}


async def test_namespacing_and_key_layout(sidecar: DaprSidecar, store: SidecarStateStore) -> None:
    other = await make_dapr_store(sidecar, new_dapr_prefix(), resilience=fast_resilience())
    try:
        await store.save("k", b"mine")
        assert await other.get("k") is None
        etag = await other.save("k", b"theirs")
        assert (await store.get("k")).value == b"mine"  # type: ignore[union-attr]
        fields, ttl = sidecar.redis_state(other._prefix + "k")  # <app-id>||<prefix><key>
        assert fields == {b"data": b"theirs", b"version": etag.encode()} and ttl == -1
    finally:
        other.drop_namespace()
        await other.close()
    assert sidecar.drop_prefix(other._prefix) == 0  # drop_namespace left nothing behind
    with pytest.raises(InvalidArgument):
        await store.save("a||b", b"x")
    with pytest.raises(InvalidArgument):
        DaprStateStore(key_prefix="p||")


async def test_sidecar_down_retries_then_opens_the_breaker(redis_url: str) -> None:
    car = DaprSidecar(redis_url).start()
    car.point_sdk_here()
    store: SidecarStateStore | None = None
    try:
        store = await make_dapr_store(
            car, new_dapr_prefix(), resilience=fast_resilience(threshold=2, reset=0.3)
        )
        counting = Counting(store._client)
        store._client = counting
        await store.save("k", b"v")
        car.stop()
        counting.calls.clear()
        for _ in range(2):
            with pytest.raises(StoreUnavailable) as failure:
                await store.get("k")
            assert failure.value.details.get("breaker") is None
        assert counting.calls["get_state"] == 6  # 3 attempts per call
        assert store.breaker_state == "open"
        with pytest.raises(StoreUnavailable) as refused:
            await store.ping()
        assert refused.value.details == {"breaker": "open"} and counting.calls["get_state"] == 6
        car.start()
        car.point_sdk_here()
        await asyncio.sleep(0.35)
        assert store.breaker_state == "half_open"
        deadline = time.monotonic() + 15  # gRPC reconnects on its own backoff (1 s, x1.6)
        while True:
            try:
                got = await store.get("k")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "sidecar never came back"
                await asyncio.sleep(0.4)
        assert got is not None and got.value == b"v"
        assert store.breaker_state == "closed"
        store.drop_namespace()
    finally:
        if store is not None:
            await store.close()
        car.stop()


async def test_conflicts_are_neither_retried_nor_counted(store: SidecarStateStore) -> None:
    counting = Counting(store._client)
    store._client = counting
    await store.save("k", b"v")
    for _ in range(5):
        with pytest.raises(ConcurrencyConflict):
            await store.save("k", b"x", expect=ABSENT)
    assert counting.calls["save_state"] == 6 and store.breaker_state == "closed"


def test_breaker_transitions_on_a_fake_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=5, monotonic=lambda: now[0])
    assert breaker.acquire()
    breaker.failed()
    assert breaker.state == "closed"
    assert breaker.acquire()
    breaker.failed()
    assert breaker.state == "open" and not breaker.acquire()
    now[0] = 5.0
    assert breaker.state == "half_open"
    assert breaker.acquire()  # the one trial ...
    assert not breaker.acquire()  # ... and no other while it runs
    breaker.failed()
    assert breaker.state == "open"
    now[0] = 10.0
    assert breaker.acquire()
    breaker.succeeded()
    assert breaker.state == "closed"
