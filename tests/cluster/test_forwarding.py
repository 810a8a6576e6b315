"""R3 across OS processes: a command sent to any holder is carried out by the owner.

Each holder is a real ``wsm holder`` process on one Redis. The recording server knows which
process holds each socket (``resolve_pids``), so "the owner acted" is checked where it matters:
the frame arrived on the owner's socket, and no other holder opened one of its own.
"""

from __future__ import annotations

import time
from functools import partial

from tests.cluster.harness import Cluster, Conn, HolderProcess, settle
from wsmanager.config import Settings
from wsmanager.core import keys
from wsmanager.core.ownership import is_reclaimable

__all__: list[str] = []


async def frames_on(cluster: Cluster, conn: Conn, text: str) -> list[str]:
    """Problems until a frame containing ``text`` has arrived for ``conn``."""
    for sock in cluster.server.sockets([conn.tag]):
        if any(isinstance(f, str) and text in f for _, f in sock.frames):
            return []
    return [f"no frame containing {text!r} on {conn.tag} yet"]


async def published_by(cluster: Cluster, topic: str, cid: str, owner: str) -> list[str]:
    events = await cluster.view.events(topic)
    if any(e.websocketid == cid and e.owner[0] == owner for e in events):
        return []
    return [f"no event of {cid} published by {owner} on {topic} yet ({len(events)} events)"]


async def check_one_socket_of(cluster: Cluster, conn: Conn, owner: HolderProcess) -> None:
    """Exactly one socket was ever opened for ``conn``, and ``owner``'s process holds it."""
    cluster.server.resolve_pids(cluster.pids())
    sockets = cluster.server.sockets([conn.tag])
    assert len(sockets) == 1, f"{len(sockets)} sockets for one connection: {sockets}"
    assert sockets[0].pid == owner.pid, (
        f"socket held by pid {sockets[0].pid}, owner {owner.name} is pid {owner.pid}"
    )


async def exercise_non_owner_commands(
    cluster: Cluster, owner: HolderProcess, via: list[HolderProcess], conn: Conn
) -> None:
    """Send, SendRaw, StartPublish, tags and StopPublish through each of ``via`` (non-owners)."""
    cid = conn.cid
    base = f"/v1/connections/{cid}"
    for holder in via:
        message = f"send-via-{holder.name}"
        reply = await holder.call("POST", f"{base}/send", {"message": message})
        assert reply.status == 200, f"Send via {holder.name}: {reply}"
        assert reply.body["response"] == message

        raw = f"raw-via-{holder.name}"
        reply = await holder.call("POST", f"{base}/sendraw", {"message": raw})
        assert reply.status == 200, f"SendRaw via {holder.name}: {reply}"
        await settle(partial(frames_on, cluster, conn, raw), f"{raw} at the server")

        topic = cluster.topic()
        reply = await holder.call("POST", f"{base}/publish", {"topic": topic})
        assert reply.status == 200, f"StartPublish via {holder.name}: {reply}"
        assert reply.body["topic"] == topic
        await settle(
            partial(published_by, cluster, topic, cid, owner.name),
            f"frames published to {topic} by the owner",
        )

        tags = {"via": holder.name}
        reply = await holder.call("PUT", f"{base}/tags", {"tags": tags})
        assert reply.status == 200, f"SetTags via {holder.name}: {reply}"
        records = await cluster.view.records([cid])
        assert dict(records[cid].tags) == tags

        reply = await holder.call("DELETE", f"{base}/publish")
        assert reply.status == 200, f"StopPublish via {holder.name}: {reply}"
        records = await cluster.view.records([cid])
        assert records[cid].topic is None

    await check_one_socket_of(cluster, conn, owner)
    record = (await cluster.view.records([cid]))[cid]
    assert record.owner is not None
    assert (record.owner.instance_id, record.fencing_token) == (owner.name, 1), (
        "forwarding must not move ownership"
    )


async def check_disconnected_everywhere(cluster: Cluster, conn: Conn, owner: HolderProcess) -> None:
    view = cluster.view
    assert await view.records([conn.cid]) == {}
    assert conn.cid not in await view.global_index()
    for name in [*cluster.live(), keys.UNOWNED]:
        assert conn.cid not in await view.owner_index(name), f"still in the index of {name}"

    async def closed() -> list[str]:
        sockets = cluster.server.sockets([conn.tag], frames=False)
        return [] if all(not s.open for s in sockets) else ["socket still open"]

    await settle(closed, "the owner to close the socket")
    [sock] = cluster.server.sockets([conn.tag], frames=False)
    assert sock.close_code == 1000, f"closed with {sock.close_code}"
    assert sock.pid == owner.pid


async def test_two_holders_every_command_via_the_non_owner(cluster: Cluster) -> None:
    a, b = await cluster.spawn("fwd2-a", "fwd2-b")
    [conn] = await cluster.open(a, 1)
    await check_one_socket_of(cluster, conn, a)

    await exercise_non_owner_commands(cluster, a, [b], conn)

    reply = await b.call("DELETE", f"/v1/connections/{conn.cid}")
    assert reply.status == 200, f"Disconnect via the non-owner: {reply}"
    await check_disconnected_everywhere(cluster, conn, a)


async def test_three_holders_connect_via_a_send_via_b_disconnect_via_c(cluster: Cluster) -> None:
    a, b, c = await cluster.spawn("fwd3-a", "fwd3-b", "fwd3-c")
    [conn] = await cluster.open(a, 1)
    await check_one_socket_of(cluster, conn, a)

    await exercise_non_owner_commands(cluster, a, [b, c], conn)
    # Every holder answers reads for every connection (cluster-wide List and Get).
    for holder in (a, b, c):
        reply = await holder.call("GET", f"/v1/connections/{conn.cid}")
        assert reply.status == 200, reply
        assert reply.body["instance_id"] == a.name
        listed = await holder.call("GET", "/v1/connections")
        assert conn.cid in {item["id"] for item in listed.body["connections"]}

    reply = await c.call("DELETE", f"/v1/connections/{conn.cid}")
    assert reply.status == 200, f"Disconnect via c: {reply}"
    await check_disconnected_everywhere(cluster, conn, a)
    reply = await b.call("POST", f"/v1/connections/{conn.cid}/sendraw", {"message": "late"})
    assert (reply.status, reply.code) == (404, "NOT_FOUND"), reply


async def test_a_command_for_a_dead_owner_reclaims_then_acts(cluster: Cluster) -> None:
    """R3: "if the owner is dead (R5) it reclaims (R7) and then acts". Periodic sweeps are
    off (RECLAIM_INTERVAL_SECONDS=3600), so only the command itself can reclaim."""
    a, b = await cluster.spawn("dead-a", "dead-b", RECLAIM_INTERVAL_SECONDS="3600")
    [conn] = await cluster.open(a, 1)
    policy = Settings.load(environ=cluster.environ()).liveness_policy()
    a.kill()
    killed_at = time.monotonic()

    async def reclaimable() -> list[str]:
        record = (await cluster.view.records([conn.cid]))[conn.cid]
        beat = await cluster.view.heartbeat(a.name)
        if is_reclaimable(record, beat, time.time(), policy):
            return []
        return ["the dead owner's record is not reclaimable yet"]

    await settle(reclaimable, "the dead owner's record to become reclaimable")
    assert await cluster.tokens([conn]) == {conn.cid: 1}, "a sweep ran although none should"

    base = f"/v1/connections/{conn.cid}"
    first = await b.call("POST", f"{base}/sendraw", {"message": "after-death-0"})
    retryable = ("UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
    assert first.status == 200 or first.code in retryable, (
        f"a command for a dead owner's connection must reclaim and act (or ask for a retry), "
        f"not refuse: {first}"
    )
    record = (await cluster.view.records([conn.cid]))[conn.cid]
    assert record.owner is not None and record.owner.instance_id == b.name, (
        f"the command did not reclaim the dead owner's record: {record}"
    )
    assert record.fencing_token == 2

    attempt = 0

    async def sent() -> list[str]:
        nonlocal attempt
        attempt += 1
        reply = await b.call("POST", f"{base}/sendraw", {"message": f"after-death-{attempt}"})
        return [] if reply.status == 200 else [f"SendRaw via the new owner: {reply}"]

    await settle(sent, "a send on the reclaimed connection", every=0.2)
    await settle(lambda: frames_on(cluster, conn, f"after-death-{attempt}"), "the frame")
    cluster.server.resolve_pids(cluster.pids())
    fresh = [s for s in cluster.server.sockets([conn.tag]) if s.opened_at > killed_at]
    assert [s.pid for s in fresh if s.open] == [b.pid]
