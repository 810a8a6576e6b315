"""Benchmark: sends through the holder's REST API vs a bare aiohttp HTTP->WebSocket forwarder,
and the inbound publish rate into Redis Streams (brief §7). Not a test: it measures and reports.

One run starts, side by side, each in its own process:

* a loopback WebSocket server (``/echo`` echoes every frame; ``/firehose`` answers ``go:N`` with
  N small frames as fast as it can);
* the baseline: a bare aiohttp app that holds one WebSocket to ``/echo`` and, on ``POST /raw``,
  writes the body as one frame, or on ``POST /send`` writes it with a 32-hex-digit correlation
  prefix and answers with the echoed frame (the same text framing the holder uses);
* the holder itself (``wsm holder``: memory state, Redis Streams pub/sub);
* a real ``redis-server`` (tests/support/redis_server.py).

The load generator (this process) then runs, for each of SendRaw and correlated Send, the same
bounded number of requests with the same concurrency against the baseline and the holder, and
reports msgs/s and p50/p99 latency as ratios. Send's unloaded round trip (concurrency 1) is also
compared with a bare WebSocket echo round trip. Last, the holder publishes a firehose of inbound
frames to Redis Streams; the baseline for that is a bare aiohttp client doing pipelined XADDs.

Results go to ``bench/results/holder_send.json``; ``--quick`` makes a short smoke run. Loopback
only, bounded loops, stops by itself (well under 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support (the Redis launcher) lives beside shared/
from bench._common import percentile, start_process, stop_process  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import echo_role, forwarder_role  # noqa: E402

from tests.support.redis_server import RedisServer, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "holder_send.json"
README = ROOT / "bench" / "README.md"
MARKERS = ("<!-- holder_send:begin -->", "<!-- holder_send:end -->")
TOKEN = "bench-token"
TARGETS = {"rate_ratio_min": 0.8, "p99_ratio_max": 1.5, "rtt_p50": "<= 2x + 1 ms"}
PUBLISH_TARGET = 50_000


# -- the load generator ------------------------------------------------------------------------


async def load(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    requests: int,
    concurrency: int,
    expect: bytes | None = None,
) -> dict[str, float]:
    """``requests`` POSTs over ``concurrency`` keep-alive connections; rate and latency."""
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
                if response.status != 200 or (expect is not None and expect not in data):
                    raise RuntimeError(f"{url}: HTTP {response.status}: {data[:200]!r}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": requests,
        "concurrency": concurrency,
        "msgs_per_s": round(requests / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
    }


async def ws_roundtrip(url: str, count: int) -> dict[str, float]:
    """The bare aiohttp echo round trip, one frame at a time (brief §7's Send baseline)."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for _ in range(count):
            key = uuid.uuid4().hex
            started = time.perf_counter()
            await ws.send_str(key + "ping")
            msg = await ws.receive()
            latencies.append(time.perf_counter() - started)
            assert msg.data.startswith(key)
    return {
        "requests": count,
        "p50_ms": round(percentile(latencies, 0.5) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _compare(base: dict[str, float], holder: dict[str, float]) -> dict[str, float]:
    return {
        "rate": round(holder["msgs_per_s"] / base["msgs_per_s"], 3),
        "p50": round(holder["p50_ms"] / base["p50_ms"], 3),
        "p99": round(holder["p99_ms"] / base["p99_ms"], 3),
    }


async def publish_holder(holder: str, echo: str, redis_url: str, frames: int) -> dict[str, Any]:
    """Frames/s from the firehose into Redis Streams through the holder."""
    from redis.asyncio import Redis

    topic = f"bench.firehose.{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    redis = Redis.from_url(redis_url)
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.post(f"{holder}/v1/connect", json={"url": f"{echo}/firehose"}) as r:
            cid = (await r.json())["connection_id"]
        base = f"{holder}/v1/connections/{cid}"
        async with session.post(f"{base}/publish", json={"topic": topic}) as r:
            assert r.status == 200, await r.text()
        started = time.perf_counter()
        async with session.post(f"{base}/sendraw", json={"message": f"go:{frames}"}) as r:
            assert r.status == 200, await r.text()
        deadline = started + 60
        count = 0
        while count < frames and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            count = await redis.xlen(topic)
        elapsed = time.perf_counter() - started
        async with session.delete(base):
            pass
    await redis.delete(topic)
    await redis.aclose()
    return {"frames": frames, "published": count, "msgs_per_s": round(count / elapsed, 1)}


async def publish_baseline(echo: str, redis_url: str, frames: int) -> dict[str, Any]:
    """A bare aiohttp client reading the firehose and XADDing in pipelined batches of 1000."""
    from redis.asyncio import Redis

    topic = f"bench.baseline.{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{echo}/firehose") as ws:
        started = time.perf_counter()
        await ws.send_str(f"go:{frames}")
        batch: list[str] = []
        done = 0
        while done < frames:
            msg = await ws.receive()
            batch.append(msg.data)
            if len(batch) == 1000 or done + len(batch) == frames:
                pipe = redis.pipeline(transaction=False)
                for data in batch:
                    pipe.xadd(topic, {"data": json.dumps({"data": data})})
                await pipe.execute()
                done += len(batch)
                batch.clear()
        elapsed = time.perf_counter() - started
    await redis.delete(topic)
    await redis.aclose()
    return {"frames": frames, "msgs_per_s": round(frames / elapsed, 1)}


# -- orchestration -------------------------------------------------------------------------------


async def measure(
    holder: str, forwarder: str, echo: str, redis_url: str, quick: bool, pids: dict[str, int]
) -> dict[str, Any]:
    scale = 10 if quick else 1
    raw_n, send_n, rtt_n, frames = (
        20_000 // scale,
        10_000 // scale,
        2_000 // scale,
        100_000 // scale,
    )
    concurrency = 32
    message = "x" * 64
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(
            f"{holder}/v1/connect", json={"url": f"{echo}/echo"}, headers=auth
        ) as response:
            cid = (await response.json())["connection_id"]
        base = f"{holder}/v1/connections/{cid}"
        body = json.dumps({"message": message}).encode()
        cases: dict[str, tuple[Any, Any, int]] = {
            "sendraw": ((f"{forwarder}/raw", message.encode(), {}, None),
                        (f"{base}/sendraw", body, auth, None), raw_n),
            "send": ((f"{forwarder}/send", message.encode(), {}, message.encode()),
                     (f"{base}/send", body, auth, b'"response"'), send_n),
        }  # fmt: skip
        results: dict[str, Any] = {}
        for name, (fwd, hold, count) in cases.items():
            best: dict[str, dict[str, float]] = {}
            for _ in range(2):  # alternate, best of two: the machine is shared by all processes
                for label, (url, data, headers, expect) in (("forwarder", fwd), ("holder", hold)):
                    await load(session, url, data, headers, requests=500, concurrency=concurrency)
                    cpu = cpu_seconds(pids[label])
                    run = await load(
                        session, url, data, headers,
                        requests=count, concurrency=concurrency, expect=expect,
                    )  # fmt: skip
                    # The server's own CPU per message: the loader shares the machine, so this
                    # says what each server costs independent of who saturated first.
                    used = cpu_seconds(pids[label]) - cpu
                    run["server_cpu_us_per_msg"] = round(used / count * 1e6, 1)
                    if label not in best or run["msgs_per_s"] > best[label]["msgs_per_s"]:
                        best[label] = run
            results[name] = {**best, "ratio": _compare(best["forwarder"], best["holder"])}
        unloaded: dict[str, Any] = {
            "bare_ws_echo": await ws_roundtrip(f"{echo}/echo", rtt_n),
        }
        for label, url, data, headers, expect in (
            ("forwarder", f"{forwarder}/send", message.encode(), {}, message.encode()),
            ("holder", f"{base}/send", body, auth, b'"response"'),
        ):
            unloaded[label] = await load(
                session, url, data, headers, requests=rtt_n, concurrency=1, expect=expect
            )
        bare = unloaded["bare_ws_echo"]["p50_ms"]
        unloaded["holder_p50_bound_ms"] = round(2 * bare + 1.0, 3)
        unloaded["holder_vs_bare_p50"] = round(unloaded["holder"]["p50_ms"] / bare, 3)
        unloaded["holder_vs_forwarder_p50"] = round(
            unloaded["holder"]["p50_ms"] / unloaded["forwarder"]["p50_ms"], 3
        )
        results["send_roundtrip"] = unloaded
        async with session.delete(base, headers=auth):
            pass
    results["publish"] = {
        "holder": await publish_holder(holder, echo, redis_url, frames),
        "baseline_bare_xadd": await publish_baseline(echo, redis_url, frames),
    }
    publish = results["publish"]
    publish["ratio"] = round(
        publish["holder"]["msgs_per_s"] / publish["baseline_bare_xadd"]["msgs_per_s"], 3
    )
    return results


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    rtt = results["send_roundtrip"]
    return {
        "sendraw_rate": results["sendraw"]["ratio"]["rate"] >= TARGETS["rate_ratio_min"],
        "sendraw_p99": results["sendraw"]["ratio"]["p99"] <= TARGETS["p99_ratio_max"],
        "send_rate": results["send"]["ratio"]["rate"] >= TARGETS["rate_ratio_min"],
        "send_p99": results["send"]["ratio"]["p99"] <= TARGETS["p99_ratio_max"],
        "send_roundtrip_p50": rtt["holder"]["p50_ms"] <= rtt["holder_p50_bound_ms"],
        "publish_rate": results["publish"]["holder"]["msgs_per_s"] >= PUBLISH_TARGET,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The servers' roles stay reachable here too (bench/function_send.py starts them this way).
    parser.add_argument("--role", choices=["echo", "forwarder"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (1/10 size)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.role == "echo":
        asyncio.run(echo_role(args.port))
        return 0
    if args.role == "forwarder":
        asyncio.run(forwarder_role(args.port, args.target))
        return 0

    started = time.time()
    servers = [sys.executable, str(Path(__file__).resolve().parent / "servers.py")]
    echo_port, fwd_port, holder_port = free_port(), free_port(), free_port()
    echo = f"ws://127.0.0.1:{echo_port}"
    procs: list[subprocess.Popen[str]] = []
    with RedisServer() as redis:
        try:
            procs.append(start_process([*servers, "echo", str(echo_port)], "ready"))
            procs.append(start_process(
                [*servers, "forwarder", str(fwd_port), f"{echo}/echo"],
                "ready",
            ))  # fmt: skip
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("WSM_")},
                "HOSTNAME": "bench-holder",
                "WSM_INTERNAL_TOKEN": TOKEN,
                "WSM_STATE_URL": "memory://",
                "WSM_PUBSUB_URL": redis.url,
                "AllowedTargetHosts": "127.0.0.1",
                "Logging__LogLevel__Default": "Warning",
            }
            holder_argv = [sys.executable, "-m", "wsmanager.cli", "holder",
                           "--http-port", str(holder_port), "--host", "127.0.0.1"]  # fmt: skip
            procs.append(start_process(holder_argv, "listening on", env))
            results = asyncio.run(
                measure(
                    f"http://127.0.0.1:{holder_port}",
                    f"http://127.0.0.1:{fwd_port}",
                    echo,
                    redis.url,
                    args.quick,
                    {"forwarder": procs[1].pid, "holder": procs[2].pid},
                )
            )
        finally:
            for proc in reversed(procs):
                stop_process(proc)
    report = {
        "benchmark": "holder_send",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "targets": {**TARGETS, "publish_msgs_per_s_min": PUBLISH_TARGET},
        "results": results,
        "verdicts": verdicts(results),
        "seconds": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    if args.output == RESULTS and not args.quick:
        update_readme(report)
    return 0


def update_readme(report: dict[str, Any]) -> None:
    """Replace the table between the holder_send markers of bench/README.md (if present)."""
    try:
        text = README.read_text()
    except OSError:
        return
    begin, end = MARKERS
    if begin not in text or end not in text:
        return
    machine = report["machine"]
    note = (
        f"Last full run: {report['seconds']} s, Python {machine['python']}, aiohttp "
        f"{machine['aiohttp']}, {machine['cpus']} CPUs (shared with every other process)."
    )
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    README.write_text(f"{head}{begin}\n{table(report)}\n\n{note}\n{end}{tail}")


def table(report: dict[str, Any]) -> str:
    r, v = report["results"], report["verdicts"]
    rtt = r["send_roundtrip"]
    lines = [
        "| measure | forwarder (baseline) | holder | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("sendraw", "send"):
        f, h, q = r[name]["forwarder"], r[name]["holder"], r[name]["ratio"]
        lines.append(
            f"| {name} msgs/s (c={f['concurrency']}) | {f['msgs_per_s']:,.0f} | "
            f"{h['msgs_per_s']:,.0f} | {q['rate']:.2f}x | >= 0.8x | {v[name + '_rate']} |"
        )
        lines.append(f"| {name} p50 / p99 ms | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} | "
                     f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f} | {q['p50']:.2f}x / {q['p99']:.2f}x"
                     f" | p99 <= 1.5x | {v[name + '_p99']} |")  # fmt: skip
    lines.append(
        f"| send round trip p50 ms (c=1; bare ws echo {rtt['bare_ws_echo']['p50_ms']:.3f}) | "
        f"{rtt['forwarder']['p50_ms']:.3f} | {rtt['holder']['p50_ms']:.3f} | "
        f"{rtt['holder_vs_bare_p50']:.2f}x bare | <= 2x bare + 1 ms "
        f"({rtt['holder_p50_bound_ms']:.3f}) | {v['send_roundtrip_p50']} |"
    )
    p = r["publish"]
    lines.append(
        f"| inbound -> Redis Streams msgs/s (bare XADD baseline) | "
        f"{p['baseline_bare_xadd']['msgs_per_s']:,.0f} | {p['holder']['msgs_per_s']:,.0f} | "
        f"{p['ratio']:.2f}x | >= 50,000/s | {v['publish_rate']} |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
