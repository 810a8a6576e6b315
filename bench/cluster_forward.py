"""Benchmark: sends forwarded by a non-owner holder (R3) vs sends to the owner, in one run.
Not a test: it measures and reports.

Two ``wsm holder`` processes (A and B) share one real Redis (state); a loopback echo server
(``bench/servers.py echo``, its own process) is the external server. One connection is opened
through A, so A owns it. The load generator (this process) then runs the same bounded number of
SendRaw and correlated Send requests, with the same concurrency over keep-alive connections,
against A (direct: the baseline) and against B (forwarded to A), alternately, best of two
rounds each. Reported: msgs/s and p50/p99 latency per path, forwarded ÷ direct, and each
holder's CPU time per message (from ``/proc``), which says what the forwarding hop costs
whichever process saturated first on a machine shared by all of them.

Every forwarded answer is checked (a Send's reply must be the echo of its message); a run that
gets errors instead (e.g. no forwarding in this build) is reported as such, not as a rate.

Results: ``bench/results/cluster_forward.json`` and a table on stdout. ``--quick``: 1/10 size.
Loopback only; stops by itself (well under two minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.* (the Redis launcher, the cluster harness)
from bench._common import percentile, start_process, stop_process  # noqa: E402
from tests.cluster.harness import TOKEN, HolderProcess, holder_environ  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cluster_forward.json"
SERVERS = ROOT / "bench" / "servers.py"
CONCURRENCY = 32


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    session: aiohttp.ClientSession,
    url: str,
    message: str,
    *,
    requests: int,
    concurrency: int,
    correlated: bool,
) -> dict[str, Any]:
    """``requests`` POSTs over ``concurrency`` keep-alive connections; rate, latency, errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = requests
    body = json.dumps({"message": message}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
            ok = response.status == 200
            if ok and correlated:
                ok = json.loads(data).get("response") == message
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                key = f"HTTP {response.status}: {data[:120].decode(errors='replace')}"
                errors[key] = errors.get(key, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"requests": requests, "concurrency": concurrency, "errors": errors}
    if latencies:
        result.update(
            ok=len(latencies),
            msgs_per_s=round(len(latencies) / elapsed, 1),
            p50_ms=round(percentile(latencies, 0.50) * 1e3, 3),
            p99_ms=round(percentile(latencies, 0.99) * 1e3, 3),
        )
    return result


async def measure(
    a: HolderProcess, b: HolderProcess, cid: str, quick: bool, session: aiohttp.ClientSession
) -> dict[str, Any]:
    scale = 10 if quick else 1
    counts = {"sendraw": 10_000 // scale, "send": 5_000 // scale}
    message = "x" * 64
    results: dict[str, Any] = {}
    for kind, count in counts.items():
        path = f"/v1/connections/{cid}/{kind}"
        best: dict[str, dict[str, Any]] = {}
        for _ in range(2):  # alternate, best of two: the machine is shared by every process
            for label, holder in (("direct", a), ("forwarded", b)):
                url = holder.url + path
                await load(session, url, message, requests=300, concurrency=CONCURRENCY,
                           correlated=kind == "send")  # fmt: skip
                cpu = {"a": cpu_seconds(a.pid), "b": cpu_seconds(b.pid)}
                run = await load(session, url, message, requests=count, concurrency=CONCURRENCY,
                                 correlated=kind == "send")  # fmt: skip
                used_a = cpu_seconds(a.pid) - cpu["a"]
                used_b = cpu_seconds(b.pid) - cpu["b"]
                run["owner_cpu_us_per_msg"] = round(used_a / count * 1e6, 1)
                run["non_owner_cpu_us_per_msg"] = round(used_b / count * 1e6, 1)
                previous = best.get(label)
                if previous is None or run.get("msgs_per_s", 0) > previous.get("msgs_per_s", 0):
                    best[label] = run
        direct, forwarded = best["direct"], best["forwarded"]
        ratio: dict[str, Any] = {}
        if "msgs_per_s" in direct and "msgs_per_s" in forwarded and not forwarded["errors"]:
            ratio = {
                "rate": round(forwarded["msgs_per_s"] / direct["msgs_per_s"], 3),
                "p50": round(forwarded["p50_ms"] / direct["p50_ms"], 3),
                "p99": round(forwarded["p99_ms"] / direct["p99_ms"], 3),
            }
        results[kind] = {**best, "forwarded_over_direct": ratio}
    return results


def _start_echo(port: int) -> subprocess.Popen[str]:
    return start_process([sys.executable, str(SERVERS), "echo", str(port)], "ready")


async def run(redis_url: str, echo: str, quick: bool, logs: Path) -> dict[str, Any]:
    environ = holder_environ(
        redis_url,
        "bench-forward:",
        {
            "WSM_PUBSUB_URL": "inproc://",
            "Logging__LogLevel__Default": "Warning",
            "INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "1",
            "INSTANCE_DISCOVERY_INTERVAL_SECONDS": "3",
            "INSTANCE_STALE_THRESHOLD_SECONDS": "6",
            "STALE_CONNECTION_TTL_SECONDS": "6",
            "RECLAIM_INTERVAL_SECONDS": "3",
        },
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        a = HolderProcess("fwd-bench-a", environ, logs, session)
        b = HolderProcess("fwd-bench-b", environ, logs, session)
        try:
            await asyncio.gather(a.start(), b.start())
            cid = await a.connect(f"{echo}/echo", auto_reconnect=False)
            return await measure(a, b, cid, quick, session)
        except BaseException:
            print(a.log_tail(30), b.log_tail(30), sep="\n", file=sys.stderr)
            raise
        finally:
            a.close()
            b.close()


def table(report: dict[str, Any]) -> str:
    lines = [
        "| measure | direct (to the owner) | forwarded (via the non-owner) | forwarded ÷ direct |",
        "|---|---|---|---|",
    ]
    for kind in ("sendraw", "send"):
        r = report["results"][kind]
        d, f, q = r["direct"], r["forwarded"], r["forwarded_over_direct"]
        if not q:
            errors = "; ".join(f"{n}x {e}" for e, n in list(f["errors"].items())[:2])
            lines.append(
                f"| {kind} | {d.get('msgs_per_s', 0):,.0f} msgs/s | errors: {errors} | - |"
            )
            continue
        lines.append(
            f"| {kind} msgs/s (c={CONCURRENCY}) | {d['msgs_per_s']:,.0f} | {f['msgs_per_s']:,.0f} "
            f"| {q['rate']:.2f}x |"
        )
        lines.append(
            f"| {kind} p50 / p99 ms | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | "
            f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} | {q['p50']:.2f}x / {q['p99']:.2f}x |"
        )
        lines.append(
            f"| {kind} holder CPU µs/msg (owner + non-owner) | "
            f"{d['owner_cpu_us_per_msg']:.0f} + {d['non_owner_cpu_us_per_msg']:.0f} | "
            f"{f['owner_cpu_us_per_msg']:.0f} + {f['non_owner_cpu_us_per_msg']:.0f} | |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (1/10 size)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.time()
    echo_port = free_port()
    echo = _start_echo(echo_port)
    try:
        with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="wsm-fwd-") as tmp:
            results = asyncio.run(
                run(redis.url, f"ws://127.0.0.1:{echo_port}", args.quick, Path(tmp))
            )
    finally:
        stop_process(echo)
    report = {
        "benchmark": "cluster_forward",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "concurrency": CONCURRENCY,
        "results": results,
        "seconds": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
