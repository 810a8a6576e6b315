"""Crashed holders (SIGKILL) across OS processes: reclaim (R6, R7), incarnations (R1), and
liveness without heartbeats (R4 with INSTANCE_HEARTBEAT_INTERVAL_SECONDS=0).

"Re-owned and re-opened" means, for every connection: the record is owned by a live holder
incarnation, exactly one per-owner index lists it (the owner's), the global index has it, its
status is CONNECTED, and the server has exactly one open socket for it, opened after the crash.
Times are measured and reported (``report``), never asserted: the waits' deadlines only guard
against hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tests.cluster.harness import FAST, Cluster, Conn, send_load, settle

__all__: list[str] = []

STALE = float(FAST["INSTANCE_STALE_THRESHOLD_SECONDS"])
TTL = float(FAST["STALE_CONNECTION_TTL_SECONDS"])
RECLAIM = float(FAST["RECLAIM_INTERVAL_SECONDS"])
#: Brief §7's bound for a killed holder's connections: stale threshold + reclaim interval + 2 s.
BOUND = STALE + RECLAIM + 2.0


async def published_again(cluster: Cluster, topic: str, conns: list[Conn], after: str) -> list[str]:
    """Problems until every connection has an event on ``topic`` newer than ``after`` that
    carries its current owner and fencing token (R9)."""
    records = await cluster.view.records(c.cid for c in conns)
    seen: set[str] = set()
    for event in await cluster.view.events(topic, after):
        record = records.get(event.websocketid or "")
        if record is None or record.owner is None:
            continue
        if event.owner == (record.owner.instance_id, record.owner.incarnation) and (
            event.token == record.fencing_token
        ):
            seen.add(record.id)
    return [f"{c.cid}: nothing published by its new owner yet" for c in conns if c.cid not in seen]


async def test_kill9_under_send_load_every_connection_reowned_exactly_once(
    cluster: Cluster, report: Callable[..., None]
) -> None:
    victim, s1, s2 = await cluster.spawn("k9-victim", "k9-s1", "k9-s2")
    topic = cluster.topic()
    conns = await cluster.open(victim, 100, topic=topic)
    assert await cluster.tokens(conns) == {c.cid: 1 for c in conns}
    view = cluster.view
    await settle(
        lambda: published_again(cluster, topic, conns, "0-0"), "the victim to publish every one"
    )

    stop = asyncio.Event()
    load = asyncio.create_task(send_load(lambda: cluster.holders, conns, stop))
    await asyncio.sleep(1.0)  # let the load run against the victim before the crash
    mark = await view.last_entry_id(topic)
    lifecycle_mark = await view.last_entry_id("websocketmanager.lifecycle")
    killed_at = time.monotonic()
    victim.kill()
    survivors = {s1.name: s1.owner[1], s2.name: s2.owner[1]}
    try:
        took = await settle(
            lambda: cluster.reopened_problems(conns, killed_at, survivors),
            "every connection re-owned by a survivor and re-opened",
            timeout=90,
        )
    finally:
        stop.set()
        statuses = await load
    report(
        "kill9_failover_100",
        seconds=round(took, 3),
        bound_seconds=BOUND,
        within_bound=took <= BOUND,
        load_statuses=statuses,
        connect_retries_aborted=victim.connect_retries,
    )

    # Exactly once: one takeover per connection (token 1 -> 2), by one of the survivors.
    records = await view.records(c.cid for c in conns)
    assert {r.fencing_token for r in records.values()} == {2}, {
        cid: r.fencing_token for cid, r in records.items() if r.fencing_token != 2
    }
    owners = {r.owner.instance_id for r in records.values() if r.owner is not None}
    assert owners <= set(survivors), owners
    assert set(await view.global_index()) >= {c.cid for c in conns}
    assert not set(await view.owner_index(victim.name)) & {c.cid for c in conns}
    for name, incarnation in survivors.items():
        index = await view.owner_index(name)
        mine = {cid for cid, r in records.items() if r.owner and r.owner.instance_id == name}
        assert {cid for cid in index if cid in records} == mine, f"index of {name} disagrees"
        assert {index[cid] for cid in mine} <= {incarnation}

    # Publishing resumed on the same topic, with the new owner and token (R9).
    await settle(
        lambda: published_again(cluster, topic, conns, mark),
        "inbound frames published by the new owners",
    )
    # Each takeover announced once (R7: "each ... emits a lifecycle event").
    ids = [c.cid for c in conns]

    async def announced() -> list[str]:
        counts = await view.reclaimed_events(ids, lifecycle_mark)
        return [f"{cid}: {n} reclaimed events" for cid, n in counts.items() if n < 1]

    await settle(announced, "a `reclaimed` lifecycle event per connection")
    counts = await view.reclaimed_events(ids, lifecycle_mark)
    assert {cid: n for cid, n in counts.items() if n != 1} == {}

    # The new owners send on the new sockets (sent to the owner itself: no forwarding needed).
    by_name = {h.name: h for h in cluster.holders}
    for conn in conns[:20]:
        owner = records[conn.cid].owner
        assert owner is not None
        reply = await by_name[owner.instance_id].call(
            "POST", f"/v1/connections/{conn.cid}/sendraw", {"message": f"after:{conn.cid}"}
        )
        assert reply.status == 200, reply

    async def arrived() -> list[str]:
        missing = []
        for conn in conns[:20]:
            [sock] = [s for s in cluster.server.sockets([conn.tag]) if s.open]
            if not any(f == f"after:{conn.cid}" for _, f in sock.frames):
                missing.append(conn.cid)
        return missing

    await settle(arrived, "frames on the re-opened sockets")
    # Still exactly one socket per connection: no survivor opened a second one.
    open_now = cluster.server.open_by_tag(c.tag for c in conns)
    assert {c.tag: len(open_now.get(c.tag, [])) for c in conns} == {c.tag: 1 for c in conns}


async def test_reused_hostname_is_a_new_incarnation_that_reclaims(
    cluster: Cluster, report: Callable[..., None]
) -> None:
    """R1: a restarted pod with the same name never silently keeps its predecessor's
    connections; they are taken over (token + 1) like any dead owner's."""
    a, b = await cluster.spawn("reuse-a", "reuse-b")
    conns = await cluster.open(a, 10)
    old = a.owner
    a.kill()
    killed_at = time.monotonic()
    await a.start()  # same HOSTNAME, same environment: a new process
    assert a.owner[0] == old[0] and a.owner[1] != old[1], (old, a.owner)
    live = cluster.live()
    took = await settle(
        lambda: cluster.reopened_problems(conns, killed_at, live),
        "the predecessor's connections re-owned by a live incarnation and re-opened",
        timeout=90,
    )
    report("hostname_reuse_reclaim", seconds=round(took, 3), bound_seconds=BOUND)
    records = await cluster.view.records(c.cid for c in conns)
    for record in records.values():
        assert record.owner is not None and record.owner.incarnation != old[1]
        assert record.fencing_token == 2, record
    assert not {
        cid for cid, inc in (await cluster.view.owner_index(a.name)).items() if inc == old[1]
    }, "the per-owner index still lists the old incarnation"
    assert b.running


async def test_heartbeats_off_liveness_falls_back_to_record_age(
    cluster: Cluster, report: Callable[..., None]
) -> None:
    """R4/R6 with INSTANCE_HEARTBEAT_INTERVAL_SECONDS=0: a live owner keeps renewing its
    records, so nothing is reclaimed; once it dies, its records are reclaimed after
    STALE_CONNECTION_TTL_SECONDS without renewal."""
    a, b = await cluster.spawn("hb0-a", "hb0-b", INSTANCE_HEARTBEAT_INTERVAL_SECONDS="0")
    conns = await cluster.open(a, 10)
    # A live owner is never reclaimed (R6): several TTLs and sweeps pass with a alive.
    await asyncio.sleep(3 * TTL + RECLAIM)
    records = await cluster.view.records(c.cid for c in conns)
    assert {
        (r.owner.instance_id if r.owner else None, r.fencing_token) for r in records.values()
    } == {(a.name, 1)}

    a.kill()
    killed_at = time.monotonic()
    took = await settle(
        lambda: cluster.reopened_problems(conns, killed_at, {b.name: b.owner[1]}),
        "the dead owner's connections reclaimed after the TTL and re-opened",
        timeout=90,
    )
    report("heartbeats_off_reclaim", seconds=round(took, 3), bound_seconds=TTL + RECLAIM + 2.0)
    tokens: dict[str, Any] = await cluster.tokens(conns)
    assert set(tokens.values()) == {2}, tokens
