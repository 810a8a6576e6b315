"""Auto-reconnect (reference §3.6) and lifecycle events (§4.2) against real servers that drop,
go away, come back, or stop answering pings; plus adoption of a reclaimed record (R7)."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support.ws_servers import Harness, WsServer, eventually, make_settings
from wsmanager.core.errors import NotConnected, NotFound
from wsmanager.core.model import ConnectionStatus
from wsmanager.holder.reconnect import ReconnectPolicy

S = ConnectionStatus


@pytest.fixture
async def server() -> AsyncIterator[WsServer]:
    async with WsServer() as srv:
        yield srv


def reconnects(h: Harness, outcome: str) -> float:
    value = h.metrics.registry.get_sample_value("wsm_reconnects_total", {"outcome": outcome})
    return value or 0.0


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = ReconnectPolicy(max_attempts=8, base_delay=1.0, max_delay=30.0)
    rng = random.Random(7)
    for attempt in range(1, 9):
        ceiling = min(2.0 ** (attempt - 1), 30.0)
        delays = {policy.delay(attempt, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered: attempts of many connections do not line up


async def test_a_dropped_socket_reconnects_with_the_reference_events(server: WsServer) -> None:
    async with Harness() as h:
        cid = await h.connect(server.url(), auto_reconnect=True)
        await h.kinds(cid, until="connected")
        await server.drop_all(1001)  # a clean server Close: no error event
        await eventually(lambda: server.handshakes == 2, "no reconnect handshake")
        await h.wait_status(cid, S.CONNECTED)
        events = await h.events(cid, until="connected", count=2)
        assert [e["kind"] for e in events] == [
            "connecting",
            "connected",
            "reconnecting",
            "connected",
        ]
        assert events[2]["attempt"] == 1 and events[2]["reason"] == "CONNECTED"
        assert events[3]["reason"] == "RECONNECTING"
        assert await h.manager.send(cid, b"again", correlation_id="c") == b"again"
        assert (await h.manager.get(cid)).fencing_token == 1  # same owner, same token


async def test_a_server_gone_for_good_ends_disconnected_with_the_exact_events(
    server: WsServer,
) -> None:
    async with Harness(settings=make_settings(ReconnectMaxAttempts="3")) as h:
        cid = await h.connect(server.url(), auto_reconnect=True)
        await h.manager.start_publish(cid, "feed", correlation_id="c")
        await server.stop()
        events = await h.events(cid, until="disconnected")
        assert [e["kind"] for e in events] == [
            "connecting",
            "connected",
            "reconnecting",
            "disconnected",
        ]
        last = events[-1]
        assert last["reason"] == "RECONNECTING" and last["attempts"] == 3
        assert last["last_error_type"] == "ClientConnectorError"
        record = await h.manager.get(cid)
        assert record.status is S.DISCONNECTED and record.topic == "feed"  # the record stays
        assert reconnects(h, "failed") == 3 and reconnects(h, "exhausted") == 1
        with pytest.raises(NotConnected):
            await h.manager.send(cid, b"x", correlation_id="c")
        assert cid not in h.manager.connections


async def test_a_server_that_comes_back_is_reconnected(server: WsServer) -> None:
    settings = make_settings(ReconnectMaxAttempts="1000", MaxReconnectDelayMs="20")
    async with Harness(settings=settings) as h:
        cid = await h.connect(server.url(), auto_reconnect=True)
        await server.stop()
        await eventually(lambda: reconnects(h, "failed") >= 2, "no failed attempts")
        assert await h.status(cid) is S.RECONNECTING
        await server.start()  # same port
        await h.wait_status(cid, S.CONNECTED)
        kinds = await h.kinds(cid, until="connected", count=2)
        assert kinds == ["connecting", "connected", "reconnecting", "connected"]
        assert await h.manager.send(cid, b"back", correlation_id="c") == b"back"


async def test_a_dead_peer_is_detected_by_keepalive_and_reported_as_an_error(
    server: WsServer,
) -> None:
    settings = make_settings(WebSocketHeartbeatSeconds="0.05", ReconnectMaxAttempts="1000")
    async with Harness(settings=settings) as h:
        cid = await h.connect(server.url("/deaf"), auto_reconnect=True)
        events = await h.events(cid, until="reconnecting")
        assert [e["kind"] for e in events[:4]] == [
            "connecting",
            "connected",
            "error",  # error comes before the transition it causes
            "reconnecting",
        ]
        assert events[2]["error_type"] == "ServerTimeoutError"
        assert events[2]["reason"] == "CONNECTED"
        await eventually(
            lambda: (
                h.manager.connections.get(cid) is not None
                and h.manager.connections[cid].ping_timeouts >= 1
            ),
            "ping timeout not counted",
        )
        await h.manager.disconnect(cid, correlation_id="c")


async def test_without_auto_reconnect_a_drop_is_final(server: WsServer) -> None:
    async with Harness() as h:
        cid = await h.connect(server.url())
        await server.drop_all(1011)
        await h.wait_status(cid, S.DISCONNECTED)
        assert await h.kinds(cid, until="disconnected") == [
            "connecting",
            "connected",
            "disconnected",
        ]
        assert server.handshakes == 1


async def test_disconnect_during_reconnect_stops_it(server: WsServer) -> None:
    settings = make_settings(ReconnectMaxAttempts="1000", MaxReconnectDelayMs="20")
    async with Harness(settings=settings) as h:
        cid = await h.connect(server.url(), auto_reconnect=True)
        await server.stop()
        await eventually(lambda: reconnects(h, "failed") >= 1, "no failed attempt")
        await h.manager.disconnect(cid, correlation_id="c")
        with pytest.raises(NotFound):
            await h.manager.get(cid)
        await server.start()
        await h.settle()
        kinds = await h.kinds(cid)
        assert kinds == ["connecting", "connected", "reconnecting", "disconnected"]
        assert server.handshakes == 1  # nothing reconnected after the Disconnect


async def test_adopt_opens_a_reclaimed_record_and_keeps_its_topic(server: WsServer) -> None:
    async with Harness() as h:
        # What a takeover (R7) leaves: owned by me, CONNECTING, same id/url/topic/tags.
        stored = await h.ownership.create(
            str(uuid.uuid4()),
            server.url(),
            auto_reconnect=True,
            topic="adopted.feed",
            tags={"k": "v"},
            status=S.CONNECTING,
        )
        feed = h.publisher.subscribe("adopted.feed")  # type: ignore[attr-defined]
        await h.manager.adopt(stored.record)
        cid = stored.record.id
        await h.wait_status(cid, S.CONNECTED)
        assert await h.kinds(cid, until="connected") == ["connected"]
        await h.manager.send_raw(cid, b"inbound", correlation_id="c")
        assert (await anext(feed)).data == b"inbound"
        # a record without auto_reconnect is re-owned without a socket
        plain = await h.ownership.create(str(uuid.uuid4()), server.url(), status=S.DISCONNECTED)
        await h.manager.adopt(plain.record)
        assert plain.record.id not in h.manager.connections
        with pytest.raises(NotConnected):
            await h.manager.send(plain.record.id, b"x", correlation_id="c")
