"""The reclaimer (R5-R8, R11) with real holders: the periodic sweep takes a dead holder's
connections and re-opens them with token + 1, publishing on the same topic; a draining holder's
connections are adopted at once; nothing is reclaimed while the store fails or while fenced.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.cluster_support import ClusterEnv, Node, cluster_env, until
from tests.support.ws_servers import WsServer
from wsmanager.core.errors import StoreUnavailable, Unavailable
from wsmanager.core.model import ConnectionStatus

FAST_SWEEPS = {"RECLAIM_INTERVAL_SECONDS": "0.3"}


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[ClusterEnv]:
    async with cluster_env(redis_url) as env:
        yield env


@pytest.fixture
async def ws() -> AsyncIterator[WsServer]:
    async with WsServer() as server:
        yield server


async def open_publishing(node: Node, ws: WsServer, count: int, topic: str) -> list[str]:
    ids = []
    for _ in range(count):
        status, answer = await node.call(
            "POST", "/v1/connect", {"url": ws.url("/silent"), "auto_reconnect": True}
        )
        assert status == 200, answer
        cid = answer["connection_id"]
        status, answer = await node.call("POST", f"/v1/connections/{cid}/publish", {"topic": topic})
        assert status == 200, answer
        ids.append(cid)
    return ids


async def test_sweep_takes_a_dead_holders_connections_and_resumes_publishing(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b, c = await cluster.start("sw-a", "sw-b", "sw-c", **FAST_SWEEPS)
    topic = f"topic-{uuid.uuid4().hex}"
    ids = await open_publishing(a, ws, 10, topic)
    subscriptions = [b.publisher.subscribe(topic), c.publisher.subscribe(topic)]
    opened_before = ws.handshakes

    await a.crash()  # no drain: the records stay a's until the survivors' sweeps take them
    records = await cluster.wait_owned(ids, {b.name, c.name}, token=2)
    assert {r.topic for r in records.values()} == {topic}
    assert ws.handshakes >= opened_before + len(ids)  # every socket re-opened (R7)

    # Publishing resumed on the same topic, by the new owners, at the new token (R9).
    await ws.push_all("after-takeover")
    seen: dict[str, dict[str, str]] = {}

    async def published() -> bool:
        for sub in subscriptions:
            while sub.pending():
                message = await anext(sub)
                if message.data == b"after-takeover":
                    seen[message.attributes["websocketid"]] = message.attributes
        return set(seen) == set(ids)

    await until(published, "every re-opened connection to publish again")
    for cid, attributes in seen.items():
        owner = records[cid].owner
        assert owner is not None and attributes["ownerinstance"] == owner.instance_id
        assert attributes["fencingtoken"] == "2"

    taken = 0
    for node in (b, c):
        sweeps = [r for r in node.audit("reclaim_sweep") if r["taken"]]
        taken += sum(r["taken"] for r in sweeps)
        assert all(r["trigger"] == "sweep" and "sw-a" in r["dead_instances"] for r in sweeps)
        assert await node.metric("wsm_reclaim_sweeps_total") >= 1
    assert taken == len(ids)
    reclaimed: list[dict[str, Any]] = []
    for node in (b, c):
        count = sum(1 for r in records.values() if r.owner == node.owner)
        if count:
            events = await node.lifecycle_events("reclaimed", count)
            reclaimed += [e for e in events if e["kind"] == "reclaimed"]
    assert sorted(e["connection_id"] for e in reclaimed) == sorted(ids)
    assert {(e["previous_owner"], e["fencing_token"]) for e in reclaimed} == {("sw-a", 2)}
    for sub in subscriptions:
        await sub.aclose()


async def test_drain_lets_a_peer_adopt_at_once(cluster: ClusterEnv, ws: WsServer) -> None:
    """Stale threshold and TTL are 60 s and periodic sweeps are off: only the drain (release,
    R11) and its hand-off can move the connections within the wait below."""
    slow = {
        "INSTANCE_STALE_THRESHOLD_SECONDS": "60",
        "STALE_CONNECTION_TTL_SECONDS": "60",
    }
    a = await cluster.add("dr-a", drain=True, **slow)
    b = await cluster.add("dr-b", **slow)
    topic = f"topic-{uuid.uuid4().hex}"
    ids = await open_publishing(a, ws, 5, topic)
    await a.stop()  # SIGTERM's path: release ownerless (token 2), close 1001, hand off

    assert await cluster.heartbeat("dr-a") is None  # R11: heartbeat deleted
    assert ws.close_codes.count(1001) >= len(ids)
    records = await cluster.wait_owned(ids, {b.name}, token=3, connected=True)
    assert {r.topic for r in records.values()} == {topic}
    assert set(ids) <= b.held()
    drains = [json.loads(line) for line in a.audit_lines if '"trigger":"drain"' in line]
    assert [(d["new_owner"], d["taken"]) for d in drains] == [(b.name, len(ids))]


async def test_nothing_is_reclaimed_while_the_store_fails(
    cluster: ClusterEnv, ws: WsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await cluster.start("sf-a", "sf-b")
    cid = (await a.call("POST", "/v1/connect", {"url": ws.url("/echo"), "auto_reconnect": True}))[
        1
    ]["connection_id"]
    await a.crash()
    await cluster.wait_reclaimable([cid], b.settings)
    reclaimer = b.components.cluster
    assert reclaimer is not None
    store = b.components.store

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("store down (test)")

    monkeypatch.setattr(store, "get", failing)
    monkeypatch.setattr(store, "bulk_get", failing)
    assert await reclaimer.reclaimer.sweep_once() is None  # R5: logged, counted, nothing taken
    assert await b.metric("wsm_reclaim_sweep_failures_total") == 1
    monkeypatch.undo()
    record = await cluster.record(cid)
    assert record is not None and record.owner is not None
    assert (record.owner.instance_id, record.fencing_token) == ("sf-a", 1)
    # Right after the outage a stale heartbeat may be the outage's doing: the next sweep takes
    # released records only (R5); a stale threshold later, the dead owner's record is taken.
    report = await reclaimer.reclaimer.sweep_once()
    assert report is not None and report.taken == [] and report.dead_instances == []
    assert b.audit("reclaim_sweep")[-1]["released_only"] is True

    async def taken() -> bool:
        report = await reclaimer.reclaimer.sweep_once()
        return report is not None and [r.id for r in report.taken] == [cid]

    await until(taken, "a sweep to take the dead owner's record once the store is trusted")


async def test_a_fenced_holder_reclaims_nothing_and_is_not_ready(
    cluster: ClusterEnv, ws: WsServer
) -> None:
    a, b = await cluster.start("fe-a", "fe-b")
    cid = (await a.call("POST", "/v1/connect", {"url": ws.url("/echo"), "auto_reconnect": True}))[
        1
    ]["connection_id"]
    await a.crash()
    await cluster.wait_reclaimable([cid], b.settings)
    cluster_b = b.components.cluster
    assert cluster_b is not None
    ownership = b.components.ownership
    # R8: b's lease lapses (as after a long pause): it must not take anything.
    lease = b.components.manager.lease
    ownership.last_renewal_at = 0.0
    lease.keep_lease = False  # hold the lapse: no heartbeat re-opens the gate meanwhile
    assert await cluster_b.reclaimer.sweep_once() is None
    with pytest.raises(Unavailable):
        await cluster_b.reclaimer.reclaim_one(cid, correlation_id="test")
    status, ready = await b.call("GET", "/ready", auth=False)
    assert status == 503 and ready["checks"]["lease"] == "fenced"
    assert await b.metric("wsm_self_fence_events_total") >= 1
    record = await cluster.record(cid)
    assert record is not None and record.fencing_token == 1
    assert record.status is ConnectionStatus.CONNECTED
