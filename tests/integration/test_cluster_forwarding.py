"""Any holder accepts any command (R3): forwarding to the owner, loop-proofing, stale tokens,
stale cached routes, unreachable owners, dead owners (lazy reclaim) and the adopt endpoint.

Real holders in this process (each on its own loopback port, peers talking real HTTP), a real
Redis, real loopback WebSocket servers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.cluster_support import ClusterEnv, Node, cluster_env, until
from tests.support.ws_servers import WsServer
from wsmanager.clock import SystemClock
from wsmanager.core.model import ConnectionStatus, Owner
from wsmanager.core.ownership import Liveness, liveness
from wsmanager.ownership import OwnershipService
from wsmanager.reclaim import sweep


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[ClusterEnv]:
    async with cluster_env(redis_url) as env:
        yield env


@pytest.fixture
async def ws() -> AsyncIterator[WsServer]:
    async with WsServer() as server:
        yield server


async def connect(node: Node, url: str, **body: Any) -> str:
    status, answer = await node.call("POST", "/v1/connect", {"url": url, **body})
    assert status == 200 and answer["status"] == "CONNECTED", answer
    connection_id: str = answer["connection_id"]
    return connection_id


def path(connection_id: str, rest: str = "") -> str:
    return f"/v1/connections/{connection_id}" + (f"/{rest}" if rest else "")


async def test_connect_through_a_send_through_b_disconnect_through_c(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b, c = await cluster.start("fw-a", "fw-b", "fw-c")
    cid = await connect(a, ws.url("/echo"), auto_reconnect=True)

    direct = await a.call("POST", path(cid, "send"), {"message": "ping"})
    assert direct == (200, {"response": "ping", "content_type": "text/plain"})
    corr = {"X-Correlation-Id": f"corr-{uuid.uuid4().hex}"}
    assert await b.call("POST", path(cid, "send"), {"message": "ping"}, headers=corr) == direct
    # The owner ran it, under the caller's correlation id (brief §8).
    sends = [r for r in a.audit("send") if r["correlation_id"] == corr["X-Correlation-Id"]]
    assert [(r["connection_id"], r["outcome"]) for r in sends] == [(cid, "ok")]
    assert not b.audit("send")

    # The owner's error answers come back unchanged too (status and body).
    bad = {"message": "x", "timeout_ms": 0}
    assert await c.call("POST", path(cid, "send"), bad) == await a.call(
        "POST", path(cid, "send"), bad
    )

    assert await c.call("POST", path(cid, "sendraw"), {"message": "raw-via-c"}) == (200, {})
    await until(lambda: _received(ws, "raw-via-c"), "the raw frame at the server")

    assert (await b.call("POST", path(cid, "tags/team"), {"value": "blue"}))[0] == 200
    assert await c.call("GET", path(cid, "tags")) == (200, {"tags": {"team": "blue"}})
    assert await b.call("GET", path(cid, "tags/team")) == (200, {"key": "team", "value": "blue"})
    assert (await c.call("PUT", path(cid, "tags"), {"tags": {"x": "1"}}))[0] == 200

    topic = f"topic-{uuid.uuid4().hex}"
    frames = a.publisher.subscribe(topic)
    status, record = await b.call("POST", path(cid, "publish"), {"topic": topic})
    assert status == 200 and record["topic"] == topic and record["instance_id"] == a.name
    await ws.push_all("pushed-by-server")
    message = await anext(frames)
    assert message.data == b"pushed-by-server"
    assert message.attributes["ownerinstance"] == a.name
    assert message.attributes["fencingtoken"] == "1"
    status, record = await c.call("DELETE", path(cid, "publish"))
    assert status == 200 and record["topic"] == ""
    await frames.aclose()

    # One socket, held by its owner only.
    assert ws.handshakes == 1
    assert cid in a.held() and cid not in b.held() | c.held()
    assert await b.metric("wsm_forwards_total", method="Send", outcome="ok") == 1
    assert await a.metric("wsm_forwards_total") == 0

    assert await c.call("DELETE", path(cid)) == (200, {})
    assert await cluster.record(cid) is None
    await until(lambda: _true(cid not in a.held()), "the owner to drop the socket")
    status, answer = await b.call("POST", path(cid, "sendraw"), {"message": "late"})
    assert (status, answer["error"]["code"]) == (404, "NOT_FOUND")


async def _received(ws: WsServer, text: str) -> bool:
    return any(data == text for _, data in ws.received)


async def _true(value: bool) -> bool:
    return value


async def test_a_forwarded_request_is_never_forwarded_again(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b = await cluster.start("loop-a", "loop-b")
    cid = await connect(a, ws.url("/echo"))
    forwarded = {"X-Wsm-Forwarded": "loop-x", "X-Wsm-Fencing-Token": "1"}
    for method, rest, body in (
        ("POST", "send", {"message": "x"}),
        ("POST", "sendraw", {"message": "x"}),
        ("DELETE", "", None),
        ("POST", "tags/k", {"value": "v"}),
    ):
        status, answer = await b.call(method, path(cid, rest), body, headers=forwarded)
        assert status == 412, (rest, answer)
        assert answer["error"]["code"] == "FAILED_PRECONDITION"
        assert answer["error"]["details"]["owner"] == a.name
    assert await b.metric("wsm_forwards_total") == 0  # b refused; it forwarded nothing
    assert ws.received == []
    # The owner itself acts on a forwarded request at its current token.
    assert await a.call("POST", path(cid, "sendraw"), {"message": "ok"}, headers=forwarded) == (
        200,
        {},
    )


async def test_a_stale_fencing_token_is_refused_naming_the_owner(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b = await cluster.start("tok-a", "tok-b")
    cid = await connect(a, ws.url("/echo"))
    for node in (a, b):
        status, answer = await node.call(
            "POST", path(cid, "sendraw"), {"message": "x"}, headers={"X-Wsm-Fencing-Token": "0"}
        )
        assert status == 412, (node.name, answer)
        details = answer["error"]["details"]
        assert (details["owner"], details["fencing_token"]) == (a.name, 1)
    current = {"X-Wsm-Fencing-Token": "1"}
    assert await b.call("POST", path(cid, "sendraw"), {"message": "y"}, headers=current) == (
        200,
        {},
    )
    status, answer = await b.call(
        "POST", path(cid, "sendraw"), {"message": "z"}, headers={"X-Wsm-Fencing-Token": "one"}
    )
    assert (status, answer["error"]["code"]) == (400, "INVALID_ARGUMENT")
    assert [data for _, data in ws.received] == ["y"]


async def test_a_stale_cached_route_is_refused_then_rerouted(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    """The forwarders cache "connection -> owner endpoint at token 1". The owner drains (its
    records go to a peer, token 3) and a new incarnation starts on the same endpoint: the
    cached route reaches a holder that refuses the stale token (412), the forwarder drops the
    entry, re-reads once and reaches the real owner."""
    a = await cluster.add("stale-a", drain=True)
    b, c = await cluster.start("stale-b", "stale-c")
    cid = await connect(a, ws.url("/echo"), auto_reconnect=True)
    for node in (b, c):  # both cache the route to a
        assert (await node.call("POST", path(cid, "send"), {"message": "warm"}))[0] == 200
    await a.stop()  # R11 drain + hand-off to one of b, c
    moved = await cluster.wait_owned([cid], {b.name, c.name}, token=3)
    owner = moved[cid].owner
    assert owner is not None
    new_owner, forwarder = (b, c) if owner.instance_id == b.name else (c, b)
    await cluster.add("stale-a", port=a.port)  # same name, same endpoint, new incarnation

    refused_before = await forwarder.metric("wsm_forwards_total", outcome="refused")
    status, answer = await forwarder.call("POST", path(cid, "send"), {"message": "rerouted"})
    assert (status, answer) == (200, {"response": "rerouted", "content_type": "text/plain"})
    assert await forwarder.metric("wsm_forwards_total", outcome="refused") == refused_before + 1
    assert cid in new_owner.held()


async def test_owner_alive_but_unreachable_is_unavailable(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b = await cluster.start("unr-a", "unr-b")
    cid = await connect(a, ws.url("/echo"), auto_reconnect=True)
    await a.unreachable()  # still running and heartbeating: alive (R4), not answering
    status, answer = await b.call("POST", path(cid, "send"), {"message": "x"})
    assert status == 503 and answer["error"]["code"] == "UNAVAILABLE", answer
    record = await cluster.record(cid)
    assert record is not None and record.owner == a.owner and record.fencing_token == 1
    assert await b.metric("wsm_forwards_total", method="Send", outcome="unreachable") >= 1
    # Reads are still answered, from the shared store.
    assert (await b.call("GET", path(cid, "tags")))[0] == 200


async def test_a_command_for_a_dead_owner_reclaims_then_acts(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b = await cluster.start("dead-a", "dead-b")
    cid = await connect(a, ws.url("/echo"), auto_reconnect=True)
    topic = f"topic-{uuid.uuid4().hex}"
    assert (await a.call("POST", path(cid, "publish"), {"topic": topic}))[0] == 200
    await a.crash()
    await cluster.wait_reclaimable([cid], b.settings)

    status, answer = await b.call("POST", path(cid, "send"), {"message": "after"})
    assert (status, answer) == (200, {"response": "after", "content_type": "text/plain"})
    record = await cluster.record(cid)
    assert record is not None and record.owner == b.owner
    assert (record.fencing_token, record.topic, record.status) == (
        2,
        topic,
        ConnectionStatus.CONNECTED,
    )
    events = await b.lifecycle_events("reclaimed")
    reclaimed = [e for e in events if e["kind"] == "reclaimed"]
    assert reclaimed[0]["connection_id"] == cid
    assert (reclaimed[0]["previous_owner"], reclaimed[0]["fencing_token"]) == (a.name, 2)
    assert [r["connection_id"] for r in b.audit("reclaim")] == [cid]
    assert await b.metric("wsm_ownership_misses_total", reason="lapsed") >= 1
    assert await b.metric("wsm_reclaim_taken_total", trigger="lazy") == 1


async def test_a_dead_owner_record_not_stale_yet_is_unavailable(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    """R6: the owner is dead (stale heartbeat) but its record was renewed less than
    STALE_CONNECTION_TTL_SECONDS ago: not reclaimable yet, a retryable 503, nothing taken."""
    a, b = await cluster.start("young-a", "young-b", STALE_CONNECTION_TTL_SECONDS="600")
    cid = await connect(a, ws.url("/echo"), auto_reconnect=True)
    owner = a.owner
    await a.crash()
    policy = b.settings.liveness_policy()

    async def dead() -> bool:
        beat = await cluster.heartbeat(owner.instance_id)
        trusted = b.components.ownership.trusts_liveness()  # R5: b judges peers by now
        return trusted and liveness(owner, beat, time.time(), policy) is Liveness.DEAD

    await until(dead, "the crashed owner's heartbeat to go stale")
    status, answer = await b.call("POST", path(cid, "send"), {"message": "x"})
    assert status == 503 and answer["error"]["code"] == "UNAVAILABLE", answer
    assert "R6" in answer["error"]["message"]
    record = await cluster.record(cid)
    assert record is not None and record.owner == owner and record.fencing_token == 1


async def test_adopt_endpoint_opens_what_a_reclaim_gave_this_holder(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b, c = await cluster.start("adopt-a", "adopt-b", "adopt-c")
    reopen = await connect(a, ws.url("/echo"), auto_reconnect=True)
    plain = await connect(a, ws.url("/echo"))
    await a.crash()
    await cluster.wait_reclaimable([reopen, plain], b.settings)
    # A reclaim made on b's behalf (as the reclaim function does).
    view = cluster.view()
    try:
        service = OwnershipService(
            view,
            me=Owner("adopt-fn", "1"),
            policy=b.settings.liveness_policy(),
            clock=SystemClock(),
        )
        report = await sweep(service, new_owner=b.owner)
    finally:
        await view.close()
    assert {r.id for r in report.taken} == {reopen, plain}
    assert b.held() == set()

    body = {"ids": [reopen, plain, "no-such-id"], "previous_owners": {reopen: a.name}}
    status, answer = await b.call("POST", "/internal/v1/adopt", body)
    assert status == 200, answer
    assert (answer["adopted"], answer["no_socket"], answer["not_found"]) == (
        [reopen],
        [plain],
        ["no-such-id"],
    )
    await cluster.wait_owned([reopen], {b.name}, token=2)
    assert (await b.call("POST", path(reopen, "send"), {"message": "adopted"}))[0] == 200
    plain_record = await cluster.record(plain)
    assert plain_record is not None and plain_record.status is ConnectionStatus.DISCONNECTED

    # Idempotent; another holder's records are not adopted; the token is required.
    status, again = await b.call("POST", "/internal/v1/adopt", {"ids": [reopen, plain]})
    assert (status, again["adopted"], again["held"]) == (200, [], [reopen])
    status, other = await c.call("POST", "/internal/v1/adopt", {"ids": [reopen]})
    assert (status, other["not_mine"]) == (200, [reopen])
    assert (await b.call("POST", "/internal/v1/adopt", {"ids": []}, auth=False))[0] == 401
    events = await b.lifecycle_events("reclaimed")
    reclaimed = [e for e in events if e["kind"] == "reclaimed"]
    assert [(e["connection_id"], e["previous_owner"]) for e in reclaimed] == [(reopen, a.name)]
