"""Benchmark: one reclaim sweep (R7) over 10,000 and 100,000 connection records on Redis, with
few orphans, against a full scan of every record in the same run. Not a test: it measures.

R7 says "the sweep's cost grows with the number of orphans, not with the number of all
records", and brief §7 asks for "a sweep over 100,000 records in under 1 s". Per record count N
(10,000 and 100,000) the store holds N records owned by 10 live holders (fresh heartbeats),
round-robin, plus a few orphans owned by a dead holder (stale heartbeat, records unrenewed for
an hour). The sweeper is one of the live holders (it owns N/10 records), running
``wsmanager.reclaim.sweep`` through a real ``OwnershipService`` on a real ``RedisStateStore``.

Measured per N and orphan count (0, 10, 100, 1,000): the sweep's wall time (median of
``--repeat`` runs, fresh orphans each run; every run must take exactly the orphans). The
baseline, in the same run: a naive sweep's unavoidable part, reading and parsing every record
(global index + bulk reads in pages of 500). Also measured, because the sweep's design makes
it visible: the cost of one ``OwnershipService.create`` (a Connect's store work) at each N, as
every create rewrites the global index, one JSON list of every connection id.

Seeding does not go through ``OwnershipService.create`` (that rewrites the global index per
record: quadratic in N); records and indexes with the same values are written through the
store port's transactions, 500 records per transaction.

Results: ``bench/results/cluster_sweep.json`` and a table on stdout. ``--quick``: N = 2,000
and 10,000, 3 repeats. Loopback only; stops by itself (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support (the Redis launcher) lives beside shared/

from tests.support.redis_server import RedisServer  # noqa: E402
from wsmanager.adapters.redis import RedisStateStore  # noqa: E402
from wsmanager.clock import SystemClock  # noqa: E402
from wsmanager.core import keys  # noqa: E402
from wsmanager.core.model import (  # noqa: E402
    ConnectionRecord,
    ConnectionStatus,
    Heartbeat,
    Owner,
    new_incarnation,
)
from wsmanager.core.ownership import LivenessPolicy  # noqa: E402
from wsmanager.indexes import encode_id_list, encode_owner_index  # noqa: E402
from wsmanager.ownership import OwnershipService  # noqa: E402
from wsmanager.ports import Operation, Upsert  # noqa: E402
from wsmanager.reclaim import sweep  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cluster_sweep.json"
LIVE = 10
CHUNK = 500
POLICY = LivenessPolicy(heartbeat_interval=10.0, stale_threshold=60.0, stale_connection_ttl=60.0)
TARGET_SECONDS_100K = 1.0


def _owner(name: str) -> Owner:
    return Owner(name, new_incarnation(time.time(), uuid.uuid4().hex[:12]))


def _record(cid: str, owner: Owner, renewed_at: float) -> ConnectionRecord:
    return ConnectionRecord(
        id=cid,
        url=f"wss://feed.example.com/stream?c={cid[:8]}",
        status=ConnectionStatus.CONNECTED,
        owner=owner,
        fencing_token=1,
        created_at=renewed_at,
        updated_at=renewed_at,
        renewed_at=renewed_at,
        topic="bench.sweep",
        tags={"feed": "bench"},
        auto_reconnect=True,
    )


async def _transact_all(store: RedisStateStore, ops: list[Operation], parallel: int = 8) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(part: list[Operation]) -> None:
        async with gate:
            await store.transact(part)

    await asyncio.gather(*(one(ops[i : i + CHUNK]) for i in range(0, len(ops), CHUNK)))


class Seeded:
    """One namespace: N live records over LIVE holders, and a dead holder for orphans."""

    def __init__(self, store: RedisStateStore, n: int) -> None:
        self.store = store
        self.n = n
        self.live = [_owner(f"live-{i}") for i in range(LIVE)]
        self.dead = _owner("dead-0")
        #: A live holder that owns nothing (yet): the sweeper of the second variant.
        self.spare = _owner("spare-0")
        self.ids: list[str] = []
        self.indexes: dict[str, dict[str, str]] = {o.instance_id: {} for o in self.live}
        self.orphan_ids: list[str] = []

    async def seed(self) -> float:
        started = time.perf_counter()
        now = time.time()
        ops: list[Operation] = []
        for i in range(self.n):
            cid = str(uuid.uuid4())
            owner = self.live[i % LIVE]
            self.ids.append(cid)
            self.indexes[owner.instance_id][cid] = owner.incarnation
            ops.append(Upsert(keys.connection_key(cid), _record(cid, owner, now).to_json()))
        await _transact_all(self.store, ops)
        index_ops: list[Operation] = [
            Upsert(keys.CONNECTION_INDEX, encode_id_list(self.ids)),
            Upsert(
                keys.INSTANCE_INDEX,
                encode_id_list([o.instance_id for o in [*self.live, self.spare, self.dead]]),
            ),
            *(
                Upsert(keys.owner_index_key(name), encode_owner_index(index))
                for name, index in self.indexes.items()
            ),
        ]
        await self.store.transact(index_ops)
        await self.beat()
        return time.perf_counter() - started

    async def beat(self) -> None:
        """Fresh heartbeats for the live holders, an hour-old one for the dead holder."""
        now = time.time()
        beats = [
            Heartbeat(o.instance_id, o.incarnation, now, "http://x", 0)
            for o in [*self.live, self.spare]
        ]
        beats.append(Heartbeat(self.dead.instance_id, self.dead.incarnation, now - 3600, "", 0))
        await self.store.transact(
            [Upsert(keys.heartbeat_key(b.instance_id), b.to_json()) for b in beats]
        )

    async def add_orphans(self, count: int) -> list[str]:
        """``count`` records of the dead holder, unrenewed for an hour (reclaimable, R6)."""
        stale = time.time() - 3600
        ids = [str(uuid.uuid4()) for _ in range(count)]
        ops: list[Operation] = [
            Upsert(keys.connection_key(cid), _record(cid, self.dead, stale).to_json())
            for cid in ids
        ]
        await _transact_all(self.store, ops)
        self.ids.extend(ids)
        dead_index = {cid: self.dead.incarnation for cid in ids}
        await self.store.transact(
            [
                Upsert(keys.CONNECTION_INDEX, encode_id_list(self.ids)),
                Upsert(keys.owner_index_key(self.dead.instance_id), encode_owner_index(dead_index)),
            ]
        )
        return ids

    def service(self, me: Owner) -> OwnershipService:
        return OwnershipService(self.store, me=me, policy=POLICY, clock=SystemClock())


async def full_scan(store: RedisStateStore) -> tuple[float, int]:
    """The naive sweep's unavoidable part: every record read and parsed."""
    started = time.perf_counter()
    raw = await store.get(keys.CONNECTION_INDEX)
    assert raw is not None
    ids: list[str] = json.loads(raw.value)
    count = 0
    for start in range(0, len(ids), CHUNK):
        page = await store.bulk_get([keys.connection_key(i) for i in ids[start : start + CHUNK]])
        for value in page.values():
            ConnectionRecord.from_json(value.value)
            count += 1
    return time.perf_counter() - started, count


async def create_cost(service: OwnershipService, count: int) -> float:
    """Median seconds of one OwnershipService.create (then delete) at the current size."""
    times = []
    for _ in range(count):
        cid = str(uuid.uuid4())
        started = time.perf_counter()
        await service.create(cid, "wss://feed.example.com/x", auto_reconnect=True)
        times.append(time.perf_counter() - started)
        await service.delete(cid)
    return statistics.median(times)


async def measure_n(url: str, n: int, orphan_counts: list[int], repeat: int) -> dict[str, Any]:
    store = RedisStateStore(url, key_prefix=f"bench-sweep-{n}-{uuid.uuid4().hex[:6]}:")
    try:
        seeded = Seeded(store, n)
        seed_seconds = await seeded.seed()
        variants: dict[str, Any] = {}
        for variant, me in (("share", seeded.live[0]), ("empty", seeded.spare)):
            service = seeded.service(me)
            await sweep(service)  # warm-up (scripts loaded, connections open); takes nothing
            runs: dict[str, Any] = {}
            for orphans in orphan_counts:
                samples = []
                examined = []
                for _ in range(repeat):
                    if orphans:
                        await seeded.add_orphans(orphans)
                    await seeded.beat()
                    started = time.perf_counter()
                    report = await sweep(service)
                    elapsed = time.perf_counter() - started
                    assert len(report.taken) == orphans, (len(report.taken), orphans)
                    assert report.conflicts == 0
                    samples.append(elapsed)
                    examined.append(report.examined)
                median = statistics.median(samples)
                runs[str(orphans)] = {
                    "orphans": orphans,
                    "sweep_ms_median": round(median * 1e3, 2),
                    "sweep_ms_max": round(max(samples) * 1e3, 2),
                    "examined": max(examined),
                    "ms_per_orphan": round(median * 1e3 / orphans, 3) if orphans else None,
                }
            owned = len(await service.my_records())
            variants[variant] = {"sweeper_owned_at_end": owned, "sweeps": runs}
        service = seeded.service(seeded.live[0])
        service.last_renewal_at = time.time()  # its lease is fresh: it may delete (R8)
        scans = [await full_scan(store) for _ in range(2)]
        scan_seconds = min(s for s, _ in scans)
        create_seconds = await create_cost(service, 5)
        return {
            "records": n,
            "live_holders": LIVE,
            "seed_seconds": round(seed_seconds, 2),
            "sweepers": {
                "share": f"a live holder owning {n // LIVE:,} of the records",
                "empty": "a live holder that owned no records before",
            },
            "variants": variants,
            "baseline_full_scan_ms": round(scan_seconds * 1e3, 1),
            "baseline_records_read": scans[0][1],
            "create_ms_median": round(create_seconds * 1e3, 2),
        }
    finally:
        await store.drop_namespace()
        await store.close()


def table(report: dict[str, Any]) -> str:
    lines = [
        "| records | orphans | sweep ms, sweeper owns 1/10 | sweep ms, sweeper owns none "
        "| full scan ms (baseline) | sweep ÷ scan | one Connect's store work ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        scan = row["baseline_full_scan_ms"]
        share, empty = row["variants"]["share"]["sweeps"], row["variants"]["empty"]["sweeps"]
        for key, run in share.items():
            ms, other = run["sweep_ms_median"], empty[key]["sweep_ms_median"]
            lines.append(
                f"| {row['records']:,} | {run['orphans']:,} | {ms:.1f} | {other:.1f} | "
                f"{scan:,.0f} | {ms / scan:.3f} | {row['create_ms_median']:.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 2,000 and 10,000; 3 repeats")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = [2_000, 10_000] if args.quick else [10_000, 100_000]
    repeat = args.repeat or (3 if args.quick else 5)
    orphan_counts = [0, 10, 100, 1000]
    started = time.time()
    with RedisServer() as redis:
        results = [asyncio.run(measure_n(redis.url, n, orphan_counts, repeat)) for n in sizes]
    largest = results[-1]["variants"]["share"]["sweeps"]
    few = [largest[k]["sweep_ms_median"] for k in ("10", "100")]
    report = {
        "benchmark": "cluster_sweep",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "policy": {"stale_threshold": 60, "stale_connection_ttl": 60},
        "repeat": repeat,
        "results": results,
        "verdicts": {
            "sweep_100k_few_orphans_under_1s": (not args.quick)
            and max(few) / 1e3 < TARGET_SECONDS_100K,
            **_growth(results),
        },
        "seconds": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(json.dumps(report["verdicts"]))
    return 0


def _growth(results: list[dict[str, Any]]) -> dict[str, Any]:
    """How the sweep grows with 10x the records (same 100 orphans) and with 10x the orphans
    (same records), for each sweeper, next to the full scan's growth with 10x the records."""
    small, large = results[0], results[-1]
    out: dict[str, Any] = {
        "full_scan_growth_10x_records": round(
            large["baseline_full_scan_ms"] / small["baseline_full_scan_ms"], 2
        )
    }
    for variant in ("share", "empty"):
        a, b = small["variants"][variant]["sweeps"], large["variants"][variant]["sweeps"]
        by_records = b["100"]["sweep_ms_median"] / a["100"]["sweep_ms_median"]
        by_orphans = b["1000"]["sweep_ms_median"] / b["100"]["sweep_ms_median"]
        out[f"{variant}_growth_10x_records"] = round(by_records, 2)
        out[f"{variant}_growth_10x_orphans"] = round(by_orphans, 2)
        out[f"{variant}_grows_more_with_orphans_than_records"] = by_orphans > by_records
    return out


if __name__ == "__main__":
    sys.exit(main())
