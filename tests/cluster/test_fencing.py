"""R8 across OS processes: a paused holder (SIGSTOP) whose connections were taken over while
it was frozen must, once resumed (SIGCONT), neither publish nor send even once.

While it is frozen, the server keeps pushing frames into its (kernel-buffered) sockets and
callers keep sending it requests (queued in its listen backlog), so it wakes up with work in
hand: inbound frames to publish and sends to write on sockets that are no longer its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.cluster.harness import Cluster, Reply, settle
from tests.cluster.test_failover import published_again

__all__: list[str] = []


async def test_paused_holder_resumed_after_takeover_publishes_and_sends_nothing(
    cluster: Cluster, report: Callable[..., None]
) -> None:
    a, b = await cluster.spawn("pause-a", "pause-b")
    topic = cluster.topic()
    conns = await cluster.open(a, 10, topic=topic)
    view, server = cluster.view, cluster.server
    await settle(lambda: published_again(cluster, topic, conns, "0-0"), "a to publish")
    server.resolve_pids([a.pid, b.pid])
    old = {s.sid for s in server.sockets(c.tag for c in conns) if s.open}
    assert len(old) == len(conns)
    assert {s.pid for s in server.sockets(c.tag for c in conns) if s.sid in old} == {a.pid}
    a_owner = a.owner

    paused_at = time.monotonic()
    a.pause()
    took = await settle(
        lambda: cluster.reopened_problems(
            conns, paused_at, {b.name: b.owner[1]}, owners=[b.name], ignore=old
        ),
        "b to take over the paused holder's connections",
        timeout=90,
    )
    report("sigstop_takeover", seconds=round(took, 3))
    # Re-opened by b means a second socket per connection now; a's old ones are still open.
    assert all(len(v) == 2 for v in server.open_by_tag(c.tag for c in conns).values())

    # Work waiting for the frozen process: sends to it (they sit in its listen backlog).
    pending = [
        asyncio.create_task(
            a.call(
                "POST",
                f"/v1/connections/{conn.cid}/sendraw",
                {"message": f"while-paused:{conn.cid}"},
                timeout=60,
            )
        )
        for conn in conns
    ]
    await asyncio.sleep(0.5)  # the server pushes more frames into a's buffers meanwhile
    mark = await view.last_entry_id(topic)
    lifecycle_mark = await view.last_entry_id("websocketmanager.lifecycle")
    resumed_at = time.monotonic()
    a.resume()

    answers: list[Reply] = list(await asyncio.gather(*pending))
    report("sigstop_pending_sends", statuses=sorted(r.status for r in answers))

    async def old_sockets_closed() -> list[str]:
        still = [s for s in server.sockets(frames=False) if s.sid in old and s.open]
        return [f"old socket {s.sid} ({s.tag}) still open" for s in still]

    await settle(old_sockets_closed, "the resumed holder to drop the sockets it lost", timeout=60)
    await asyncio.sleep(1.0)  # anything it would still publish late has had time to show

    # Nothing it sent after waking reached the server on its old sockets...
    late = {
        s.tag: s.frames_after(resumed_at)
        for s in server.sockets(c.tag for c in conns)
        if s.sid in old and s.frames_after(resumed_at)
    }
    assert late == {}, f"the deposed holder sent after resuming: {late}"
    # ...and nothing was published under its name after it woke (R8, R9).
    stale = [e for e in await view.events(topic, mark) if e.owner == a_owner]
    assert stale == [], f"the deposed holder published {len(stale)} frames after resuming"
    cids = {c.cid for c in conns}
    stale_lifecycle = [
        e.event["type"]
        for e in await view.events("websocketmanager.lifecycle", lifecycle_mark)
        if e.websocketid in cids and e.event.get("source", "").endswith(f":{a.name}")
    ]
    assert stale_lifecycle == [], (
        f"the deposed holder published lifecycle events: {stale_lifecycle}"
    )
    # Sends it accepted while frozen were either refused or carried out by the real owner:
    # every one answered 200 went out on the new owner's socket.
    for reply in answers:
        assert reply.status != 500, reply
    done = [c for c, r in zip(conns, answers, strict=True) if r.status == 200]

    async def on_new_sockets() -> list[str]:
        server.resolve_pids([b.pid])
        missing = []
        for conn in done:
            fresh = [s for s in server.sockets([conn.tag]) if s.sid not in old]
            if not any(f"while-paused:{conn.cid}" == f for s in fresh for _, f in s.frames):
                missing.append(f"{conn.cid}: answered 200, not on the new owner's socket")
            elif {s.pid for s in fresh if s.open} != {b.pid}:
                missing.append(f"{conn.cid}: new socket not held by b ({fresh})")
        return missing

    await settle(on_new_sockets, "accepted sends to reach the server through the new owner")

    # Ownership stayed with b (the woken holder took nothing back), each connection once.
    records = await view.records(cids)
    assert {
        (r.owner.instance_id if r.owner else None, r.fencing_token) for r in records.values()
    } == {(b.name, 2)}
    assert await view.ownership_problems(cids, cluster.live()) == []
    await settle(lambda: published_again(cluster, topic, conns, mark), "b to keep publishing")
