"""Benchmark: a killed holder's 1,000 connections re-owned and re-opened by two survivors,
against brief §7's bound (stale threshold + reclaim interval + 2 s). Not a test: it measures.

Three ``wsm holder`` processes share one real Redis (state and pub/sub); a loopback WebSocket
server (tests/cluster/harness.py: its own thread, records every socket) stands in for the
external servers. 1,000 connections (``auto_reconnect``, so a takeover re-opens them) are opened
through the victim; then it is killed with SIGKILL at a random moment of its heartbeat cycle.
Measured from the kill, polling the store and the server every 50 ms:

* first takeover seen, and all re-owned: every record owned by a live survivor, token 2;
* all re-opened: additionally every record CONNECTED and the server holding exactly one open
  socket per connection, opened after the kill;
* the split between the survivors, the ``reclaimed`` lifecycle events published, and a final
  check that every connection is owned exactly once (indexes agree).

Intervals are the production defaults divided by ten (stated in the JSON):
``INSTANCE_HEARTBEAT_INTERVAL_SECONDS`` 1, ``INSTANCE_DISCOVERY_INTERVAL_SECONDS`` 3,
``INSTANCE_STALE_THRESHOLD_SECONDS`` 6, ``STALE_CONNECTION_TTL_SECONDS`` 6,
``RECLAIM_INTERVAL_SECONDS`` 3: bound = 6 + 3 + 2 = 11 s. ``--fast`` uses the tests' intervals
(0.2 / 0.5 / 1.5 / 1.5 / 0.5: bound 4 s).

Results: ``bench/results/cluster_failover.json`` and a table on stdout. ``--quick``: 200
connections. Loopback only; stops by itself (about a minute per run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.* (the Redis launcher, the cluster harness)

from tests.cluster.harness import FAST, Cluster  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cluster_failover.json"
PRODUCTION_BY_TEN = {
    "INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "1",
    "INSTANCE_DISCOVERY_INTERVAL_SECONDS": "3",
    "INSTANCE_STALE_THRESHOLD_SECONDS": "6",
    "STALE_CONNECTION_TTL_SECONDS": "6",
    "RECLAIM_INTERVAL_SECONDS": "3",
}


def bound_of(intervals: dict[str, str]) -> float:
    return (
        float(intervals["INSTANCE_STALE_THRESHOLD_SECONDS"])
        + float(intervals["RECLAIM_INTERVAL_SECONDS"])
        + 2.0
    )


async def one_run(
    redis_url: str, workdir: Path, count: int, intervals: dict[str, str]
) -> dict[str, Any]:
    overrides = {**intervals, "Logging__LogLevel__Default": "Warning"}
    async with Cluster(redis_url, workdir, overrides=overrides) as cluster:
        try:
            return await _measure(cluster, count, intervals)
        except BaseException:
            print(cluster.log_tails(40), file=sys.stderr)
            raise


async def _measure(cluster: Cluster, count: int, intervals: dict[str, str]) -> dict[str, Any]:
    victim, s1, s2 = await cluster.spawn("bench-victim", "bench-s1", "bench-s2")
    opened_at = time.perf_counter()
    conns = await cluster.open(victim, count, concurrency=32)
    open_seconds = time.perf_counter() - opened_at
    ids = [c.cid for c in conns]
    view, server = cluster.view, cluster.server
    assert await view.ownership_problems(ids, cluster.live()) == []
    # Kill at a random moment of the victim's heartbeat and renewal cycle.
    await asyncio.sleep(random.uniform(0.5, 0.5 + float(intervals["RECLAIM_INTERVAL_SECONDS"])))
    lifecycle_mark = await view.last_entry_id("websocketmanager.lifecycle")
    survivors = {s1.name: s1.owner[1], s2.name: s2.owner[1]}
    loop = asyncio.get_running_loop()
    killed = loop.time()
    killed_mono = time.monotonic()
    victim.kill()

    first_taken: float | None = None
    all_owned: float | None = None
    all_open: float | None = None
    #: (seconds since the kill, re-owned, of those CONNECTED, new open sockets) every ~0.5 s.
    timeline: list[tuple[float, int, int, int]] = []
    next_sample = 0.0
    deadline = killed + 10 * bound_of(intervals) + 60
    while all_open is None:
        now = loop.time()
        if now > deadline:
            raise RuntimeError("failover did not complete (see the holder logs)")
        records = await view.records(ids)
        owned = [
            r
            for r in records.values()
            if r.owner is not None
            and survivors.get(r.owner.instance_id) == r.owner.incarnation
            and r.fencing_token == 2
        ]
        if owned and first_taken is None:
            first_taken = now - killed
        if len(owned) == count and all_owned is None:
            all_owned = now - killed
        connected = sum(1 for r in owned if r.status.value == "CONNECTED")
        open_now = server.open_by_tag(c.tag for c in conns)
        fresh = sum(
            1
            for c in conns
            if [s.opened_at > killed_mono for s in open_now.get(c.tag, [])] == [True]
        )
        if now - killed >= next_sample:
            timeline.append((round(now - killed, 2), len(owned), connected, fresh))
            next_sample += 0.5
        if all_owned is not None and connected == count and fresh == count:
            all_open = now - killed
        await asyncio.sleep(0.05)

    problems = await view.ownership_problems(ids, survivors)
    records = await view.records(ids)
    split: dict[str, int] = {}
    for record in records.values():
        assert record.owner is not None
        split[record.owner.instance_id] = split.get(record.owner.instance_id, 0) + 1
    await asyncio.sleep(1.0)  # lifecycle events are published asynchronously
    reclaimed = await view.reclaimed_events(ids, lifecycle_mark)
    bound = bound_of(intervals)
    return {
        "connections": count,
        "open_seconds": round(open_seconds, 2),
        "first_takeover_seconds": round(first_taken or 0.0, 3),
        "all_reowned_seconds": round(all_owned or 0.0, 3),
        "all_reopened_seconds": round(all_open, 3),
        "bound_seconds": bound,
        "within_bound": all_open <= bound,
        "split": split,
        "tokens": sorted({r.fencing_token for r in records.values()}),
        "reclaimed_events": {
            "total": sum(reclaimed.values()),
            "connections_with_exactly_one": sum(1 for n in reclaimed.values() if n == 1),
        },
        "ownership_problems": problems[:10],
        "timeline_seconds_owned_connected_fresh_sockets": timeline,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| run | connections | first takeover s | all re-owned s | all re-opened s | bound s "
        "| within | split | owned once |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(report["runs"], 1):
        split = " / ".join(f"{n}" for n in sorted(run["split"].values(), reverse=True))
        lines.append(
            f"| {i} | {run['connections']:,} | {run['first_takeover_seconds']:.2f} | "
            f"{run['all_reowned_seconds']:.2f} | {run['all_reopened_seconds']:.2f} | "
            f"{run['bound_seconds']:g} | {run['within_bound']} | {split} | "
            f"{not run['ownership_problems']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 connections")
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--fast", action="store_true", help="the tests' intervals (bound 4 s)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--logs", type=Path, default=None, help="keep the holder logs here")
    args = parser.parse_args()
    count = args.connections or (200 if args.quick else 1000)
    intervals = dict(FAST) if args.fast else dict(PRODUCTION_BY_TEN)
    started = time.time()
    runs = []
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="wsm-failover-") as tmp:
        logs = args.logs or Path(tmp)
        for i in range(args.runs):
            runs.append(asyncio.run(one_run(redis.url, logs / f"run{i}", count, intervals)))
    report = {
        "benchmark": "cluster_failover",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "intervals": intervals,
        "bound": "INSTANCE_STALE_THRESHOLD_SECONDS + RECLAIM_INTERVAL_SECONDS + 2 s",
        "runs": runs,
        "verdicts": {
            "all_within_bound": all(r["within_bound"] for r in runs),
            "all_owned_once": all(not r["ownership_problems"] for r in runs),
        },
        "seconds": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(json.dumps(report["verdicts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
