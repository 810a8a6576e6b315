"""The Dapr pub/sub and secret-store adapters through the real SDK, against the sidecar stand-in
(publishes land in Redis streams, where these tests read them back with their metadata)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.dapr_sidecar import Counting, DaprSidecar, fast_resilience
from wsmanager.adapters.dapr_pubsub import BatchingPublisher, DaprPublisher
from wsmanager.adapters.dapr_secrets import DaprSecretStore, EnvSecretStore
from wsmanager.core.errors import InvalidArgument, Unavailable
from wsmanager.ports import Message

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def sidecar(redis_url: str) -> Iterator[DaprSidecar]:
    with DaprSidecar(redis_url, secrets={"wsm-internal-token": TOKEN}) as car:
        car.point_sdk_here()
        yield car


@pytest.fixture(autouse=True)
def _sdk_points_at_sidecar(sidecar: DaprSidecar) -> None:
    """The SDK's settings are global; tests that start their own sidecar move them."""
    sidecar.point_sdk_here()


@pytest.fixture
async def publisher(sidecar: DaprSidecar) -> AsyncIterator[DaprPublisher]:
    pub = await DaprPublisher(address=sidecar.grpc_address, resilience=fast_resilience()).open()
    yield pub
    await pub.close()


# -- pub/sub ----------------------------------------------------------------------------------


def msg(topic: str, n: int, **attrs: str) -> Message:
    data = json.dumps({"n": n}).encode()
    return Message(topic=topic, data=data, attributes={"sequence": str(n), **attrs})


async def test_publish_carries_cloudevent_attributes(
    sidecar: DaprSidecar, publisher: DaprPublisher
) -> None:
    topic = f"t-{uuid.uuid4().hex}"
    attrs = {
        "id": "ev-1",
        "type": "com.virtufin.websocketmanager.message",
        "source": "wsm/pod-a",
        "websocketid": "c1",
        "websocketurl": "wss://example.test/feed",
        "owner": "pod-a",
        "fencingtoken": "7",
    }
    await publisher.publish(msg(topic, 1, **attrs))
    await publisher.publish(Message(topic, b"\x00\xff", "application/octet-stream"))
    await publisher.publish(Message(topic, "héllo".encode(), "text/plain"))
    first, binary, text = sidecar.published(topic)
    assert {k: first["event"][k] for k in attrs} == attrs
    assert first["event"]["data"] == {"n": 1} and first["event"]["sequence"] == "1"
    assert (first["event"]["topic"], first["event"]["pubsubname"]) == (topic, "pubsub")
    assert first["metadata"] == {
        "cloudevent.id": "ev-1",
        "cloudevent.source": "wsm/pod-a",
        "cloudevent.type": "com.virtufin.websocketmanager.message",
    }
    assert binary["event"]["data_base64"] == "AP8=" and text["event"]["data"] == "héllo"


async def test_publish_many_uses_bulk_publish_in_order(
    sidecar: DaprSidecar, sidecar_client_publisher: tuple[DaprPublisher, Counting]
) -> None:
    publisher, counting = sidecar_client_publisher
    t1, t2 = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    await publisher.publish_many([msg(t1 if n % 2 else t2, n) for n in range(7)])
    assert [e["event"]["data"]["n"] for e in sidecar.published(t1)] == [1, 3, 5]
    assert [e["event"]["data"]["n"] for e in sidecar.published(t2)] == [0, 2, 4, 6]
    assert sidecar.published(t1)[0]["metadata"]["cloudevent.type"]
    assert counting.calls == {"publish_events": 2}


@pytest.fixture
async def sidecar_client_publisher(
    sidecar: DaprSidecar,
) -> AsyncIterator[tuple[DaprPublisher, Counting]]:
    pub = await DaprPublisher(address=sidecar.grpc_address, resilience=fast_resilience()).open()
    counting = Counting(pub._client)
    pub._client = counting
    yield pub, counting
    pub._client = counting.inner
    await pub.close()


async def test_failed_bulk_entries_are_retried_once(
    sidecar: DaprSidecar, publisher: DaprPublisher
) -> None:
    topic = f"t-{uuid.uuid4().hex}"
    sidecar.fail_bulk_entries(topic, entries=2, calls=1)
    await publisher.publish_many([msg(topic, n) for n in range(5)])
    # All arrive; the two re-sent ones land after the rest (consumers order by sequence, R9).
    assert [e["event"]["data"]["n"] for e in sidecar.published(topic)] == [2, 3, 4, 0, 1]


async def test_bulk_entries_failing_twice_raise_naming_how_many(
    sidecar: DaprSidecar, publisher: DaprPublisher
) -> None:
    topic = f"t-{uuid.uuid4().hex}"
    sidecar.fail_bulk_entries(topic, entries=2, calls=2)
    with pytest.raises(Unavailable, match="2 of 5 events failed") as failure:
        await publisher.publish_many([msg(topic, n) for n in range(5)])
    assert failure.value.details["failed"] == 2
    assert len(sidecar.published(topic)) == 3


async def test_publish_failure_is_unavailable(
    sidecar: DaprSidecar, publisher: DaprPublisher
) -> None:
    topic = f"t-{uuid.uuid4().hex}"
    sidecar.fail_topics.add(topic)
    try:
        with pytest.raises(Unavailable, match="INTERNAL"):
            await publisher.publish(msg(topic, 1))
        with pytest.raises(Unavailable):
            await publisher.publish_many([msg(topic, 1)])
    finally:
        sidecar.fail_topics.discard(topic)


async def test_batching_publisher_coalesces_and_reports_failures(
    sidecar: DaprSidecar, sidecar_client_publisher: tuple[DaprPublisher, Counting]
) -> None:
    inner, counting = sidecar_client_publisher
    batching = BatchingPublisher(inner, max_batch=4, max_delay=0.01)
    topic = f"t-{uuid.uuid4().hex}"
    await asyncio.gather(*(batching.publish(msg(topic, n)) for n in range(10)))
    assert [e["event"]["data"]["n"] for e in sidecar.published(topic)] == list(range(10))
    assert counting.calls["publish_events"] == 3  # 4 + 4 + 2
    sidecar.fail_bulk_entries(topic, entries=1, calls=2)
    results = await asyncio.gather(
        *(batching.publish(msg(topic, n)) for n in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)


# -- secrets ----------------------------------------------------------------------------------


async def test_dapr_secret_store(sidecar: DaprSidecar) -> None:
    secrets = await DaprSecretStore(
        address=sidecar.grpc_address, resilience=fast_resilience()
    ).open()
    try:
        assert await secrets.get_secret("wsm-internal-token") == TOKEN
        assert await secrets.get_secret("nope") is None
    finally:
        await secrets.close()
    wrong = await DaprSecretStore(
        "vault", address=sidecar.grpc_address, resilience=fast_resilience()
    ).open()
    try:
        with pytest.raises(Unavailable, match="INVALID_ARGUMENT"):
            await wrong.get_secret("wsm-internal-token")
    finally:
        await wrong.close()


async def test_env_secret_store(tmp_path: Path) -> None:
    (tmp_path / "wsm-internal-token").write_text("from-file\n")
    (tmp_path / "other").write_text("x")
    env = EnvSecretStore({"WSM_INTERNAL_TOKEN": "from-env"}, files_dir=tmp_path)
    assert await env.get_secret("wsm-internal-token") == "from-env"
    assert await env.get_secret("other") == "x" and await env.get_secret("missing") is None
    files = EnvSecretStore({}, files_dir=tmp_path)
    assert await files.get_secret("wsm-internal-token") == "from-file"
    assert await EnvSecretStore({"A_B_C": ""}).get_secret("a-b.c") is None
    for bad in ("../etc/passwd", "", ".."):
        with pytest.raises(InvalidArgument):
            await files.get_secret(bad)
