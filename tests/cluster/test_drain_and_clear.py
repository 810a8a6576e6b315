"""SIGTERM drain (R11) and CLEAR_ALL_ON_START (R10) with real holder processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.cluster.harness import FAST, Cluster, settle
from tests.cluster.test_failover import published_again
from wsmanager.core import keys

__all__: list[str] = []

LONG_TTL = 60.0
RECLAIM = float(FAST["RECLAIM_INTERVAL_SECONDS"])


async def test_sigterm_drain_lets_a_peer_adopt_at_once(
    cluster: Cluster, report: Callable[..., None]
) -> None:
    """With STALE_CONNECTION_TTL_SECONDS=60 (and the stale threshold as long), a dead owner's
    records would wait a minute; adoption well within that can only come from the drain."""
    env = {
        "STALE_CONNECTION_TTL_SECONDS": str(LONG_TTL),
        "INSTANCE_STALE_THRESHOLD_SECONDS": str(LONG_TTL),
    }
    a, b = await cluster.spawn("drain-a", "drain-b", **env)
    topic = cluster.topic()
    conns = await cluster.open(a, 20, topic=topic)
    view, server = cluster.view, cluster.server
    await settle(lambda: published_again(cluster, topic, conns, "0-0"), "a to publish")
    old = {s.sid for s in server.sockets(c.tag for c in conns) if s.open}
    mark = await view.last_entry_id(topic)

    termed_at = time.monotonic()
    a.terminate()
    code = await a.wait_exit(timeout=30)
    exited = time.monotonic() - termed_at
    assert code == 0, f"drained holder exited with {code}:\n{a.log_tail()}"
    took = await settle(
        lambda: cluster.reopened_problems(conns, termed_at, {b.name: b.owner[1]}),
        "b to adopt the drained connections",
        timeout=LONG_TTL / 2,  # half the TTL: a TTL-based reclaim cannot be what we see
    )
    report(
        "sigterm_adoption",
        seconds=round(took, 3),
        exit_seconds=round(exited, 3),
        ttl_seconds=LONG_TTL,
    )

    closed = [s for s in server.sockets(c.tag for c in conns) if s.sid in old]
    assert all(not s.open for s in closed)
    assert {s.close_code for s in closed} == {1001}, "R11: sockets closed with 1001 Going Away"
    records = await view.records(c.cid for c in conns)
    assert all(r.fencing_token > 1 for r in records.values()), "ownership changed: token grows"
    assert await view.heartbeat(a.name) is None, "R11: the drained holder deletes its heartbeat"
    assert {c.cid for c in conns}.isdisjoint(await view.owner_index(keys.UNOWNED))
    assert {c.cid for c in conns}.isdisjoint(await view.owner_index(a.name))
    await settle(lambda: published_again(cluster, topic, conns, mark), "b to publish")


async def test_clear_all_on_start_removes_records_and_indexes_before_serving(
    cluster: Cluster,
) -> None:
    a, b = await cluster.spawn("clear-a", "clear-b")
    conns = (await cluster.open(a, 5)) + (await cluster.open(b, 3))
    view = cluster.view
    assert len(await view.key_names("websocketmanager.connection.*")) == len(conns) + 1
    for holder in (a, b):
        holder.kill()  # crashed: every record stays, owned by the dead
    fresh = cluster.holder("clear-c", CLEAR_ALL_ON_START="true")
    await fresh.start()  # ready means serving; R10 is done before that

    assert await view.key_names("websocketmanager.connection.*") == [], "records or global index"
    indexes = await view.key_names("websocketmanager.instance.index.*")
    leftovers = {name: await view.owner_index(name.rsplit(".", 1)[1]) for name in indexes}
    assert {name: entries for name, entries in leftovers.items() if entries} == {}
    reply = await fresh.call("GET", "/v1/connections")
    assert reply.status == 200 and reply.body["connections"] == [], reply
    for conn in conns:
        reply = await fresh.call("GET", f"/v1/connections/{conn.cid}")
        assert reply.status == 404, reply
    # Nothing comes back: the sweeps of the cleared holder have nothing to reclaim.
    await asyncio.sleep(4 * RECLAIM)
    assert await view.key_names("websocketmanager.connection.*") == []
    assert not cluster.server.open_by_tag(conn.tag for conn in conns)
