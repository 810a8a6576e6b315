"""R5 across OS processes: the state store going away is never evidence that peers are dead.

Redis (this test's own, with an append-only file and ``appendfsync always``, so it comes back
with its data as a production Redis holding state does) is killed for more than twice the stale
threshold while two holders own connections, then restarted on the same port. Every heartbeat
in it is then older than the stale threshold, although both holders were alive all along: a
sweeper that trusts those ages reclaims live holders' connections (R6 forbids it).

Intervals: heartbeat 1 s, stale threshold and TTL 3 s, sweeps every 0.5 s (the ratio of
heartbeat to threshold closer to production's 10 s / 60 s than the other tests' 0.2 s / 1.5 s):
after recovery the holders re-register at different moments up to a heartbeat apart, as they
would in production, while their sweeps keep running.

Checked after recovery: nothing was reclaimed (owners and fencing tokens unchanged), every
connection is owned once and CONNECTED, each still has exactly one open socket at the server,
and publishing resumed with the same owners and tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster.harness import FAST, Cluster, DurableRedis, settle
from tests.cluster.test_failover import published_again

__all__: list[str] = []

RECLAIM = float(FAST["RECLAIM_INTERVAL_SECONDS"])
STALE = 3.0
INTERVALS = {
    "INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "1",
    "INSTANCE_STALE_THRESHOLD_SECONDS": str(STALE),
    "STALE_CONNECTION_TTL_SECONDS": str(STALE),
}


async def test_redis_outage_longer_than_stale_threshold_reclaims_nothing(
    durable_redis: DurableRedis, tmp_path: Path, report: Callable[..., None]
) -> None:
    workdir = tmp_path / "cluster"
    async with Cluster(
        durable_redis.url, workdir, overrides=INTERVALS, push_interval=0.25
    ) as cluster:
        try:
            await _outage(cluster, durable_redis, report)
        except BaseException:
            print(f"\n===== holder logs =====\n{cluster.log_tails()}")
            raise


async def _outage(cluster: Cluster, redis: DurableRedis, report: Callable[..., None]) -> None:
    # One after the other, as pods start: holders started together tick in step, which hides
    # how they re-register at different moments after the outage.
    [a] = await cluster.spawn("outage-a")
    [b] = await cluster.spawn("outage-b")
    topic = cluster.topic()
    conns = (await cluster.open(a, 10, topic=topic)) + (await cluster.open(b, 10, topic=topic))
    cids = [c.cid for c in conns]
    view, server = cluster.view, cluster.server
    await settle(lambda: published_again(cluster, topic, conns, "0-0"), "publishing")
    before = {
        cid: (r.owner.instance_id if r.owner else None, r.fencing_token)
        for cid, r in (await view.records(cids)).items()
    }
    sockets_before = {
        t: [s.sid for s in v] for t, v in server.open_by_tag(c.tag for c in conns).items()
    }
    assert all(len(v) == 1 for v in sockets_before.values())

    redis.kill()
    down_at = time.monotonic()
    await asyncio.sleep(2 * STALE + 0.5)  # the outage: longer than the stale threshold
    # Both holders are alive through it (liveness is not readiness)...
    for holder in (a, b):
        health = await holder.call("GET", "/health", timeout=5)
        assert health.status == 200, f"{holder.name} during the outage: {health}"
        ready = await holder.call("GET", "/ready", timeout=10)
        assert ready.status == 503, f"{holder.name} claims ready with its store down: {ready}"
    redis.start()
    up_at = time.monotonic()
    report("redis_outage", seconds_down=round(up_at - down_at, 3), stale_threshold=STALE)

    async def both_ready() -> list[str]:
        problems = []
        for holder in (a, b):
            reply = await holder.call("GET", "/ready", timeout=5)
            if reply.status != 200:
                problems.append(f"{holder.name}: {reply}")
        return problems

    await settle(both_ready, "both holders ready again", timeout=60)
    mark = await view.last_entry_id(topic)
    # Several sweeps by each holder after recovery (any wrong takeover would show by now).
    await asyncio.sleep(STALE + 4 * RECLAIM)

    after = {
        cid: (r.owner.instance_id if r.owner else None, r.fencing_token)
        for cid, r in (await view.records(cids)).items()
    }
    changed = {cid: (before[cid], after.get(cid)) for cid in cids if after.get(cid) != before[cid]}
    assert changed == {}, f"connections of live holders were reclaimed after the outage: {changed}"
    assert await view.ownership_problems(cids, cluster.live()) == []
    open_now = server.open_by_tag(c.tag for c in conns)
    assert {c.tag: len(open_now.get(c.tag, [])) for c in conns} == {c.tag: 1 for c in conns}
    await settle(
        lambda: published_again(cluster, topic, conns, mark),
        "publishing to resume with the same owners and tokens",
    )
