"""Publishing inbound frames: order and R9 attributes through the in-process publisher and
through Redis Streams on a real Redis, credential redaction, and self-fencing (R8)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.support.redis_server import free_port
from tests.support.ws_servers import Harness, WsServer, eventually
from wsmanager.adapters.inproc import OVERFLOW_TYPE, InProcessPublisher
from wsmanager.adapters.redis_streams import RedisStreamPublisher
from wsmanager.clock import ManualClock
from wsmanager.core.errors import SelfFenced, Unavailable
from wsmanager.core.model import ConnectionStatus, Owner, new_incarnation
from wsmanager.holder.events import LIFECYCLE_TOPIC
from wsmanager.ownership import OwnershipService
from wsmanager.ports import Message
from wsmanager.reclaim import sweep

FLOOD = 500


@pytest.fixture
async def server() -> AsyncIterator[WsServer]:
    async with WsServer() as srv:
        yield srv


async def stream(client: Redis, key: str) -> list[dict[str, Any]]:
    """The CloudEvents in one stream, oldest first (each entry's ``data`` field)."""
    entries: Any = await client.xrange(key)
    return [json.loads(fields[b"data"]) for _, fields in entries]


def check_r9(messages: list[dict[str, Any]], cid: str, owner: Owner, token: int) -> None:
    """R9: every event names connection, owner and token, and sequences count up from 1."""
    for i, attrs in enumerate(messages, start=1):
        assert attrs["websocketid"] == cid
        assert attrs["ownerinstance"] == owner.instance_id
        assert attrs["ownerincarnation"] == owner.incarnation
        assert attrs["fencingtoken"] == str(token)
        assert attrs["sequence"] == str(i)
        assert attrs["id"] == f"{cid}:{token}:{i}"
        assert attrs["timestamp"].endswith("Z") and attrs["contenttype"] == "text/plain"


async def test_inbound_frames_are_published_in_order_with_sequence_numbers(
    server: WsServer,
) -> None:
    async with Harness() as h:
        cid = await h.connect(server.url(f"/flood?n={FLOOD}"))
        await h.manager.start_publish(cid, "feed", correlation_id="c")
        feed = h.publisher.subscribe("feed")  # type: ignore[attr-defined]
        await h.manager.send_raw(cid, b"go", correlation_id="c")
        got = [await anext(feed) for _ in range(FLOOD)]
        assert [m.data for m in got] == [str(i).encode() for i in range(FLOOD)]
        check_r9([dict(m.attributes) for m in got], cid, h.ownership.me, 1)
        assert got[0].attributes["websocketurl"] == server.url(f"/flood?n={FLOOD}")


async def test_redis_streams_get_every_frame_in_order(server: WsServer, redis_url: str) -> None:
    prefix = f"wsm-test-{uuid.uuid4().hex}:"
    publisher = RedisStreamPublisher(redis_url, key_prefix=prefix, maxlen=None)
    client = Redis.from_url(redis_url)
    try:
        async with Harness(publisher=publisher) as h:
            cid = await h.connect(server.url(f"/flood?n={FLOOD}"))
            await h.manager.start_publish(cid, "feed", correlation_id="c")
            await h.manager.send_raw(cid, b"go", correlation_id="c")
            await eventually(lambda: h.manager.inbound.published >= FLOOD, "not all published")
            await h.settle()
            events = await stream(client, prefix + "feed")
            assert [e["data"] for e in events] == [str(i) for i in range(FLOOD)]
            assert {e["datacontenttype"] for e in events} == {"text/plain"}
            check_r9(events, cid, h.ownership.me, 1)
            lifecycle = await stream(client, prefix + LIFECYCLE_TOPIC)
            types = [e["type"].rsplit(".", 1)[1] for e in lifecycle]
            assert types == ["connecting", "connected"]
            assert (await h.manager.health())["publisher"]["reachable"]
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_redis_stream_publisher_keeps_order_per_topic_and_encodes_binary(
    redis_url: str,
) -> None:
    prefix = f"wsm-test-{uuid.uuid4().hex}:"
    publisher = RedisStreamPublisher(redis_url, key_prefix=prefix, maxlen=1000)
    client = Redis.from_url(redis_url)
    try:
        await publisher.publish_many(
            [
                Message("a", b"1", "text/plain", {"id": "x1"}),
                Message("b", b"\x00\xff", "application/octet-stream", {"id": "y1"}),
                Message("a", "ü".encode(), "application/json", {"id": "x2"}),
            ]
        )
        await publisher.ping()
        a = await stream(client, prefix + "a")
        b = await stream(client, prefix + "b")
        assert [(e["id"], e["data"]) for e in a] == [("x1", "1"), ("x2", "ü")]
        assert base64.b64decode(b[0]["data_base64"]) == b"\x00\xff" and "data" not in b[0]
        assert a[0]["specversion"] == "1.0" and a[0]["datacontenttype"] == "text/plain"
    finally:
        await client.delete(prefix + "a", prefix + "b")
        await client.aclose()
        await publisher.close()


async def test_an_unreachable_redis_is_unavailable() -> None:
    publisher = RedisStreamPublisher(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    try:
        with pytest.raises(Unavailable):
            await publisher.publish(Message("t", b"x"))
        with pytest.raises(Unavailable):
            await publisher.ping()
    finally:
        await publisher.close()


async def test_a_slow_inproc_subscriber_loses_its_oldest_events_and_is_told() -> None:
    publisher = InProcessPublisher()
    slow = publisher.subscribe("t", queue_size=2)
    everything = publisher.subscribe("*")
    await publisher.publish_many([Message("t", str(i).encode()) for i in range(5)])
    notice = await anext(slow)
    assert notice.attributes["type"] == OVERFLOW_TYPE and json.loads(notice.data) == {"dropped": 3}
    assert [(await anext(slow)).data for _ in range(2)] == [b"3", b"4"]
    assert slow.dropped == 3 and everything.pending() == 5
    await publisher.close()
    with pytest.raises(Unavailable):
        await publisher.publish(Message("t", b"late"))
    assert [m async for m in slow] == []  # closed: the iteration ends


async def test_credentials_never_appear_in_events_attributes_or_audit(server: WsServer) -> None:
    secret, token = "s3cr3t-pw", "t0k3n-value"
    async with Harness() as h:
        url = server.url(f"/echo?token={token}&venue=x").replace("//", f"//alice:{secret}@", 1)
        record = await h.manager.connect(url, correlation_id="c")
        assert record.url == url  # stored whole: a reconnect needs the credentials
        await h.manager.start_publish(record.id, "feed", correlation_id="c")
        feed = h.publisher.subscribe("feed")  # type: ignore[attr-defined]
        await h.manager.send_raw(record.id, b"hello", correlation_id="c")
        message = await anext(feed)
        await h.manager.disconnect(record.id, correlation_id="c")
        events = await h.events(record.id, until="disconnected")
        shown = server.url("/echo?token=***&venue=x")
        assert message.attributes["websocketurl"] == shown
        assert {e["url"] for e in events} == {shown}
        everything = json.dumps(events) + json.dumps(dict(message.attributes))
        everything += "".join(h.audit_lines) + json.dumps(await h.manager.health())
        assert secret not in everything and token not in everything and "alice" not in everything


async def fenced_harness(server: WsServer) -> tuple[Harness, ManualClock]:
    clock = ManualClock()
    h = Harness(clock=clock)
    await h.__aenter__()
    return h, clock


async def test_a_fenced_holder_neither_sends_nor_publishes_until_it_reconfirms(
    server: WsServer,
) -> None:
    """R8: past the renew deadline nothing is sent or published; held frames go out, in
    order, once the records are re-confirmed."""
    h, clock = await fenced_harness(server)
    try:
        cid = await h.connect(server.url("/silent"))
        await h.manager.start_publish(cid, "feed", correlation_id="c")
        feed = h.publisher.subscribe("feed")  # type: ignore[attr-defined]
        clock.advance(h.ownership.policy.effective_renew_deadline + 1)  # a long pause
        assert h.ownership.fenced()
        with pytest.raises(SelfFenced):
            await h.manager.send(cid, b"x", correlation_id="c")
        with pytest.raises(SelfFenced):
            await h.manager.send_raw(cid, b"x", correlation_id="c")
        sent_before = len(server.received)
        for text in ("a", "b", "c"):
            await server.push_all(text)
        conn = h.manager.connections[cid]
        await eventually(lambda: conn.frames_in == 3, "frames not received")
        assert len(h.manager.inbound) == 3  # held in the outbox: the drain waits at the gate
        assert feed.pending() == 0 and h.manager.inbound.published == 0
        assert len(server.received) == sent_before
        await h.manager.lease.tick()  # heartbeat + re-confirm: the gate reopens
        got = [await anext(feed) for _ in range(3)]
        assert [(m.data, m.attributes["sequence"]) for m in got] == [
            (b"a", "1"),
            (b"b", "2"),
            (b"c", "3"),
        ]
        await h.manager.send_raw(cid, b"after", correlation_id="c")
    finally:
        await h.__aexit__(None, None, None)


async def test_a_fenced_holder_whose_connection_was_taken_over_drops_it_silently(
    server: WsServer,
) -> None:
    """R8: a paused process that wakes after its connection was taken over must not publish
    even once; its held frames are dropped and its socket closed."""
    h, clock = await fenced_harness(server)
    try:
        cid = await h.connect(server.url("/silent"))
        await h.manager.start_publish(cid, "feed", correlation_id="c")
        feed = h.publisher.subscribe("feed")  # type: ignore[attr-defined]
        clock.advance(h.ownership.policy.stale_threshold + h.ownership.policy.stale_connection_ttl)
        peer = OwnershipService(
            h.store,
            me=Owner("holder-b", new_incarnation(clock.now(), "b")),
            policy=h.ownership.policy,
            clock=clock,
        )
        await peer.heartbeat()
        report = await sweep(peer)  # R7: the peer takes the orphan over (token 2)
        assert [r.id for r in report.taken] == [cid]
        await server.push_all("from the past")
        conn = h.manager.connections[cid]
        await eventually(lambda: conn.frames_in == 1, "frame not received")
        await h.manager.lease.tick()  # wakes: re-confirms, finds the record lost
        assert conn.lost and cid not in h.manager.connections
        await eventually(lambda: 1001 in server.close_codes, "socket not closed")
        await eventually(lambda: h.manager.inbound.dropped == 1, "held frame not dropped")
        assert feed.pending() == 0 and h.manager.inbound.published == 0
        record = await h.manager.get(cid)
        assert record.owner == peer.me and record.fencing_token == 2
        # R7 without auto_reconnect: DISCONNECTED, as the takeover wrote it (not overwritten)
        assert record.status is ConnectionStatus.DISCONNECTED and record.topic == "feed"
    finally:
        await h.__aexit__(None, None, None)


class FlakyPublisher:
    """A real in-process publisher behind a switch that makes every publish fail (a broker
    outage); the manager under test is not touched."""

    def __init__(self) -> None:
        self.inner = InProcessPublisher()
        self.down = True

    async def publish(self, message: Message) -> None:
        await self.publish_many([message])

    async def publish_many(self, messages: Sequence[Message]) -> None:
        if self.down:
            raise Unavailable("broker is down")
        await self.inner.publish_many(messages)

    async def close(self) -> None:
        await self.inner.close()


async def test_publisher_outage_inbound_is_retried_in_order_lifecycle_is_best_effort(
    server: WsServer,
) -> None:
    flaky = FlakyPublisher()
    async with Harness(publisher=flaky) as h:
        cid = await h.connect(server.url())  # lifecycle publishes fail: connect still works
        await h.manager.start_publish(cid, "feed", correlation_id="c")
        feed = flaky.inner.subscribe("feed")
        for text in (b"1", b"2", b"3"):
            await h.manager.send_raw(cid, text, correlation_id="c")
        await eventually(lambda: h.manager.inbound.failed_batches >= 2, "no retries")
        health = await h.manager.health()
        assert health["publisher"]["reachable"] is False
        assert health["connections"][cid]["healthy"] is False
        # lifecycle events are best-effort: a failed batch is logged and dropped, not retried
        await eventually(lambda: h.manager.lifecycle.dropped >= 1, "lifecycle not dropped")
        flaky.down = False
        got = [await anext(feed) for _ in range(3)]
        assert [(m.data, m.attributes["sequence"]) for m in got] == [
            (b"1", "1"),
            (b"2", "2"),
            (b"3", "3"),
        ]
        assert (await h.manager.health())["publisher"]["reachable"] is True
