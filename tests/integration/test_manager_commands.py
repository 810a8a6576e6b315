"""ConnectionManager commands against real loopback WebSocket servers: every method, every error.

No part of the manager is mocked: sockets are real aiohttp servers (tests.support.ws_servers),
the store is the memory adapter with real ETag semantics, events go through the in-process
publisher. Waits are event-driven (hang guards only, never timing assertions).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType

from tests.support.redis_server import free_port
from tests.support.ws_servers import HANG_GUARD, Harness, WsServer, eventually, make_settings
from wsmanager.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotConnected,
    NotFound,
    NotOwner,
    ResourceExhausted,
    Unavailable,
)
from wsmanager.core.model import ConnectionStatus, Owner, new_incarnation
from wsmanager.ownership import OwnershipService

S = ConnectionStatus


@pytest.fixture
async def server() -> AsyncIterator[WsServer]:
    async with WsServer() as srv:
        yield srv


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with Harness() as harness:
        yield harness


async def test_connect_returns_a_connected_record_owned_by_this_holder(
    server: WsServer, h: Harness
) -> None:
    record = await h.manager.connect(server.url(), tags={"env": "test"}, correlation_id="corr-1")
    assert record.status is S.CONNECTED
    assert record.owner == h.ownership.me and record.fencing_token == 1  # R2
    assert dict(record.tags) == {"env": "test"} and record.url == server.url()
    assert await h.manager.get(record.id) == record
    assert [r.id for r in await h.manager.list()] == [record.id]
    events = await h.events(record.id, until="connected")
    assert [(e["kind"], e.get("reason")) for e in events] == [
        ("connecting", "DISCONNECTED"),
        ("connected", "CONNECTING"),
    ]
    assert events[1]["instance_id"] == "holder-a"
    audit = [json.loads(line) for line in h.audit_lines]
    assert audit[-1]["action"] == "connect" and audit[-1]["correlation_id"] == "corr-1"
    assert audit[-1]["connection_id"] == record.id and audit[-1]["outcome"] == "ok"


@pytest.mark.parametrize(
    "url", ["http://example.com/", "ws://10.0.0.1/", "ws://169.254.169.254/", "ws://localhost/"]
)
async def test_bad_or_internal_urls_are_refused_and_change_nothing(h: Harness, url: str) -> None:
    with pytest.raises(InvalidArgument):
        await h.connect(url)
    assert await h.manager.list() == []


async def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    answers = {"feed.example": ["93.184.216.34", "10.1.2.3"], "gone.example": []}

    async def resolver(host: str, port: int) -> list[str]:
        if host == "broken.example":
            raise OSError("name resolution failed")
        return answers[host]

    async with Harness(resolver=resolver) as h:
        with pytest.raises(InvalidArgument, match="resolves to a private address"):
            await h.connect("ws://feed.example/")
        with pytest.raises(Unavailable, match="no address"):
            await h.connect("ws://gone.example/")
        with pytest.raises(Unavailable, match="cannot resolve"):
            await h.connect("ws://broken.example/")
        assert await h.manager.list() == []


async def test_a_failed_first_connect_leaves_no_record(h: Harness) -> None:
    url = f"ws://user:s3cret@127.0.0.1:{free_port()}/feed"
    with pytest.raises(Unavailable, match="could not connect") as err:
        await h.connect(url)
    assert "s3cret" not in err.value.message
    assert await h.manager.list() == [] and await h.ownership.my_records() == {}
    events = await h.events(until="disconnected")
    assert [e["kind"] for e in events] == ["connecting", "error", "disconnected"]
    assert events[1]["error_type"] and "s3cret" not in json.dumps(events)


async def test_a_refused_handshake_is_invalid_argument(server: WsServer, h: Harness) -> None:
    with pytest.raises(InvalidArgument, match=r"refused the WebSocket handshake \(HTTP 403\)"):
        await h.connect(server.url("/reject"))
    assert await h.manager.list() == []


async def test_send_round_trips_text_and_binary_with_the_prefix_stripped(
    server: WsServer, h: Harness
) -> None:
    cid = await h.connect(server.url())
    assert await h.manager.send(cid, "héllo".encode(), correlation_id="c") == "héllo".encode()
    binary = b"\x00\xff\x10"
    reply = await h.manager.send(
        cid, binary, content_type="application/octet-stream", correlation_id="c"
    )
    assert reply == binary
    (text_kind, text_frame), (bin_kind, bin_frame) = server.received
    assert text_kind is WSMsgType.TEXT and isinstance(text_frame, str)
    uuid.UUID(hex=text_frame[:32])  # 32 hex digits, then the payload
    assert text_frame[32:] == "héllo"
    assert bin_kind is WSMsgType.BINARY and isinstance(bin_frame, bytes)
    assert len(bin_frame) == 16 + len(binary) and bin_frame[16:] == binary
    assert uuid.UUID(bytes=bin_frame[:16]).version == 4  # raw uuid.UUID.bytes


async def test_concurrent_sends_each_get_their_own_reply(server: WsServer, h: Harness) -> None:
    cid = await h.connect(server.url())
    payloads = [f"message {i}".encode() for i in range(50)]
    replies = await asyncio.gather(
        *(h.manager.send(cid, p, correlation_id=f"c{i}") for i, p in enumerate(payloads))
    )
    assert replies == payloads


async def test_send_raw_sends_the_payload_as_is_with_the_frame_type_of_its_content_type(
    server: WsServer, h: Harness
) -> None:
    cid = await h.connect(server.url("/silent"), content_type="application/json")
    await h.manager.send_raw(cid, b'{"a":1}', correlation_id="c")
    await h.manager.send_raw(
        cid, b"\x01\x02", content_type="application/octet-stream", correlation_id="c"
    )
    await eventually(lambda: len(server.received) == 2, "frames not received")
    assert server.received == [(WSMsgType.TEXT, '{"a":1}'), (WSMsgType.BINARY, b"\x01\x02")]


async def test_send_without_a_reply_is_deadline_exceeded(server: WsServer, h: Harness) -> None:
    cid = await h.connect(server.url("/silent"))
    conn = h.manager.connections[cid]
    with pytest.raises(DeadlineExceeded, match="Request timeout"):
        await h.manager.send(cid, b"ping", timeout=0.05, correlation_id="c")
    assert conn.pending == {} and await h.status(cid) is S.CONNECTED
    assert b"wsm_send_timeouts_total 1.0" in h.metrics.render()


async def test_bad_payloads_and_timeouts_are_invalid_argument(server: WsServer) -> None:
    async with Harness(settings=make_settings(MaxMessageBytes="16")) as h:
        cid = await h.connect(server.url())
        for call in (
            h.manager.send(cid, b"x" * 17, correlation_id="c"),
            h.manager.send_raw(cid, b"x" * 17, correlation_id="c"),
            h.manager.send(cid, b"\xff\xfe", content_type="text/plain", correlation_id="c"),
            h.manager.send(cid, b"ok", content_type="nonsense", correlation_id="c"),
            h.manager.send(cid, b"ok", timeout=0, correlation_id="c"),
            h.manager.send(cid, b"ok", timeout=float("nan"), correlation_id="c"),
        ):
            with pytest.raises(InvalidArgument):
                await call
        assert await h.manager.send(cid, b"x" * 16, correlation_id="c") == b"x" * 16


async def test_a_full_send_queue_is_resource_exhausted(server: WsServer) -> None:
    async with Harness(settings=make_settings(SendQueueSize="2")) as h:
        cid = await h.connect(server.url("/stall"), content_type="application/octet-stream")
        big = b"\x00" * (1 << 20)
        tasks: list[asyncio.Task[None]] = []

        async def fill() -> BaseException:
            while True:  # the server never reads: writes block once the TCP buffers are full
                tasks.append(asyncio.create_task(h.manager.send_raw(cid, big, correlation_id="q")))
                await asyncio.sleep(0)
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        return task.exception()  # type: ignore[return-value]

        async with asyncio.timeout(HANG_GUARD):
            error = await fill()
        assert isinstance(error, ResourceExhausted)
        assert h.manager.connections[cid].inflight == 2
        await h.manager.disconnect(cid, correlation_id="c")
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_disconnect_closes_normally_and_removes_record_and_indexes(
    server: WsServer, h: Harness
) -> None:
    cid = await h.connect(server.url())
    await h.manager.disconnect(cid, correlation_id="bye")
    await eventually(lambda: server.close_codes == [1000], "server did not see 1000")
    assert await h.manager.list() == [] and await h.ownership.my_records() == {}
    with pytest.raises(NotFound):
        await h.manager.get(cid)
    assert await h.kinds(cid, until="disconnected") == ["connecting", "connected", "disconnected"]
    with pytest.raises(NotFound):
        await h.manager.disconnect(cid, correlation_id="again")
    with pytest.raises(NotFound):
        await h.manager.send(cid, b"x", correlation_id="c")


async def test_unknown_ids_are_not_found(h: Harness) -> None:
    missing = str(uuid.uuid4())
    for call in (
        h.manager.get(missing),
        h.manager.send(missing, b"x", correlation_id="c"),
        h.manager.send_raw(missing, b"x", correlation_id="c"),
        h.manager.disconnect(missing, correlation_id="c"),
        h.manager.start_publish(missing, "t", correlation_id="c"),
        h.manager.stop_publish(missing, correlation_id="c"),
        h.manager.set_tag(missing, "k", "v", correlation_id="c"),
        h.manager.get_tags(missing),
    ):
        with pytest.raises(NotFound):
            await call


async def test_only_the_owner_acts(server: WsServer, h: Harness) -> None:
    """R3: a record owned by another instance is refused with NotOwner (412), reads work."""
    other = OwnershipService(
        h.store,
        me=Owner("holder-b", new_incarnation(h.clock.now(), "b")),
        policy=h.settings.liveness_policy(),
        clock=h.clock,
    )
    stored = await other.create(str(uuid.uuid4()), server.url(), tags={"team": "fx"})
    cid = stored.record.id
    for call in (
        h.manager.send(cid, b"x", correlation_id="c"),
        h.manager.send_raw(cid, b"x", correlation_id="c"),
        h.manager.disconnect(cid, correlation_id="c"),
        h.manager.start_publish(cid, "t", correlation_id="c"),
        h.manager.stop_publish(cid, correlation_id="c"),
        h.manager.set_tag(cid, "k", "v", correlation_id="c"),
        h.manager.set_tags(cid, {}, correlation_id="c"),
        h.manager.adopt(stored.record),
    ):
        with pytest.raises(NotOwner) as err:
            await call
        assert err.value.owner == "holder-b" and err.value.http_status == 412
    assert await h.manager.get_tags(cid) == {"team": "fx"}
    assert (await h.manager.get(cid)).owner == other.me


async def test_a_server_close_without_auto_reconnect_leaves_a_disconnected_record(
    server: WsServer, h: Harness
) -> None:
    cid = await h.connect(server.url("/close"))
    await h.wait_status(cid, S.DISCONNECTED)
    assert await h.kinds(cid, until="disconnected") == ["connecting", "connected", "disconnected"]
    with pytest.raises(NotConnected):
        await h.manager.send(cid, b"x", correlation_id="c")
    with pytest.raises(NotConnected):
        await h.manager.start_publish(cid, "t", correlation_id="c")
    assert (await h.manager.stop_publish(cid, correlation_id="c")).topic is None
    await h.manager.disconnect(cid, correlation_id="c")
    await h.settle()
    assert await h.kinds(cid) == ["connecting", "connected", "disconnected"]  # no new event
    assert await h.manager.list() == []


async def test_publishing_relays_unmatched_frames_only(server: WsServer, h: Harness) -> None:
    cid = await h.connect(server.url())
    with pytest.raises(InvalidArgument, match="Topic is required"):
        await h.manager.start_publish(cid, "", correlation_id="c")
    record = await h.manager.start_publish(cid, "feed.trades", correlation_id="c")
    assert record.topic == "feed.trades" == (await h.manager.get(cid)).topic
    assert isinstance(h.publisher, type(h.publisher))
    feed = h.publisher.subscribe("feed.trades")  # type: ignore[attr-defined]
    assert await h.manager.send(cid, b"correlated", correlation_id="c") == b"correlated"
    await h.manager.send_raw(cid, b"echoed", correlation_id="c")  # comes back unmatched
    message = await anext(feed)
    assert message.data == b"echoed" and message.attributes["sequence"] == "1"
    record = await h.manager.stop_publish(cid, correlation_id="c")
    assert record.topic is None and (await h.manager.get(cid)).topic is None
    await h.manager.send_raw(cid, b"not published", correlation_id="c")
    assert await h.manager.send(cid, b"barrier", correlation_id="c") == b"barrier"
    assert feed.pending() == 0


async def test_fragmented_and_binary_frames_are_reassembled(server: WsServer, h: Harness) -> None:
    cid = await h.connect(server.url("/fragments"))
    await h.manager.start_publish(cid, "frags", correlation_id="c")
    feed = h.publisher.subscribe("frags")  # type: ignore[attr-defined]
    await h.manager.send_raw(cid, b"go", correlation_id="c")
    got = [await anext(feed) for _ in range(3)]
    assert [(m.data, m.content_type) for m in got] == [
        ("héllo fragmented wörld".encode(), "text/plain"),
        (b"\x00\x01\xfe\xff", "application/octet-stream"),
        (b"\x80binary", "application/octet-stream"),
    ]
    assert [m.attributes["contenttype"] for m in got] == [m.content_type for m in got]


async def test_tags_get_set_replace_and_filter(server: WsServer, h: Harness) -> None:
    a = await h.connect(server.url(), tags={"env": "prod", "team": "fx"})
    b = await h.connect(server.url(), tags={"env": "prod"})
    await h.manager.set_tag(b, "team", "rates", correlation_id="c")
    assert await h.manager.get_tag(b, "team") == "rates"
    assert await h.manager.get_tag(b, "missing") is None
    assert [r.id for r in await h.manager.list({"env": "prod"})] == [a, b]
    assert [r.id for r in await h.manager.list({"env": "prod", "team": "fx"})] == [a]
    await h.manager.set_tags(a, {"only": "this"}, correlation_id="c")
    assert await h.manager.get_tags(a) == {"only": "this"}
    with pytest.raises(InvalidArgument):
        await h.manager.set_tags(a, {f"k{i}": "v" for i in range(51)}, correlation_id="c")
    await h.manager.set_tags(a, {f"k{i}": "v" for i in range(50)}, correlation_id="c")
    with pytest.raises(InvalidArgument):
        await h.manager.set_tag(a, "one-too-many", "v", correlation_id="c")
    with pytest.raises(InvalidArgument):
        await h.manager.set_tag(a, "k", "v" * 1025, correlation_id="c")
    assert len(await h.manager.get_tags(a)) == 50


async def test_health_and_the_sweep_report_publishing_connections(
    server: WsServer, h: Harness
) -> None:
    cid = await h.connect(server.url())
    await h.manager.start_publish(cid, "feed", correlation_id="c")
    await h.manager.send_raw(cid, b"tick", correlation_id="c")
    await eventually(lambda: h.manager.inbound.published == 1, "frame not published")
    health = await h.manager.health()
    facts = health["connections"][cid]
    assert facts["socket_alive"] and facts["publishing"] and facts["publisher_reachable"]
    assert facts["pings_answered"] is True and facts["healthy"] and facts["sequence"] == 1
    assert facts["last_inbound_age_seconds"] is not None
    assert health["may_act"] and health["publisher"]["published"] == 1
    start = h.manager.sweeper.sweeps
    await eventually(lambda: h.manager.sweeper.sweeps > start, "no sweep ran")
    assert (await h.manager.health())["sweep"]["publishing"] == 1
    assert b'wsm_connections{status="CONNECTED"} 1.0' in h.metrics.render()


async def test_a_failing_log_handler_never_stops_the_health_sweep(
    server: WsServer, h: Harness
) -> None:
    class Exploding(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("log sink is broken")

    cid = await h.connect(server.url())
    await h.manager.start_publish(cid, "feed", correlation_id="c")
    logger = logging.getLogger("wsmanager.holder.health")
    broken = Exploding()
    logger.addFilter(broken)
    try:
        start = h.manager.sweeper.sweeps
        await eventually(lambda: h.manager.sweeper.sweeps >= start + 3, "the sweep stopped")
    finally:
        logger.removeFilter(broken)


async def test_stop_closes_with_going_away_and_drain_releases_records(server: WsServer) -> None:
    async with Harness() as h:
        kept = await h.connect(server.url())
        await h.manager.stop()
        await eventually(lambda: server.close_codes == [1001], "server did not see 1001")
        record = await h.manager.get(kept)
        assert record.status is S.CONNECTED and record.owner == h.ownership.me  # not drained
    async with Harness() as h:
        released = await h.connect(server.url())
        await h.manager.stop(drain=True)
        record = await h.manager.get(released)
        assert record.owner is None and record.status is S.DISCONNECTED  # R11
        assert record.fencing_token == 2
        events = await h.events(released, until="disconnected")
        assert events[-1]["released"] is True


async def test_commands_after_stop_are_unavailable(server: WsServer) -> None:
    async with Harness() as h:
        cid = await h.connect(server.url())
        await h.manager.stop()
        with pytest.raises(Unavailable):
            await h.manager.send(cid, b"x", correlation_id="c")
        with pytest.raises(Unavailable):
            await h.connect(server.url())
