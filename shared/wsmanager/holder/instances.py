"""``wsm serve --instances N``: N holders on this machine, as N processes sharing one SQLite
state file and one internal token, so a user can kill one and watch the others take over.

Holder *i* (1..N) is a ``wsm serve`` child process with ``HOSTNAME=wsm-i`` (R1) on
``HttpPort + i - 1``; it advertises ``http://127.0.0.1:<port>`` (``WSM_HTTP_HOST``) to its
peers, which forward to it (R3) and reclaim from it (R7). Every child gets the parent's
configuration (``--appsettings``, ``--set`` and the dedicated flags, the environment) plus its
own identity; ``CLEAR_ALL_ON_START`` (R10) applies to the first child only, which is started
(and has cleared) before the others. Each child's output is relayed with a ``[wsm-i]`` prefix.

Each child has its own in-process pub/sub (``inproc://``): ``wsm tail`` shows what the holder
it talks to publishes. Set ``WSM_PUBSUB_URL=redis://…`` for one shared stream.

Stopping: Ctrl-C or SIGTERM to the parent sends SIGTERM to every child (each drains: R11). A
child killed on its own (``kill -TERM`` drains, ``kill -9`` crashes) is reported, and the others
keep running and take over its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from wsmanager.config import Settings
from wsmanager.core.errors import ConfigError

__all__ = ["MAX_INSTANCES", "Child", "child_overrides", "run_instances", "serve_argv"]

MAX_INSTANCES = 64
_LISTENING = "wsm: listening on "
#: Seconds a child may take to start, and to drain after SIGTERM, before it is killed.
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


def child_overrides(settings: Settings, index: int, count: int) -> dict[str, str]:
    """The settings that make child ``index`` (1-based) of ``count`` a holder of its own."""
    first = settings.http_port
    if not 1 <= count <= MAX_INSTANCES:
        raise ConfigError("--instances", f"must be 1-{MAX_INSTANCES}")
    if first + count - 1 > 65535:
        raise ConfigError("HttpPort", f"{first} + {count} instances goes past port 65535")
    port = first + index - 1
    grpc = settings.grpc_port
    if first <= grpc < first + count:  # unused here, but must differ from every HttpPort
        grpc = first + count + index - 1 if first + 2 * count - 1 <= 65535 else first - index
    return {
        "HOSTNAME": f"wsm-{index}",
        "HttpPort": str(port),
        "GrpcPort": str(grpc),
        "CLEAR_ALL_ON_START": "true" if index == 1 and settings.clear_all_on_start else "false",
    }


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    relays: list[asyncio.Task[None]] = field(default_factory=list)


async def _relay(stream: asyncio.StreamReader | None, out: TextIO, child: Child) -> None:
    if stream is None:
        return
    while line := await stream.readline():
        text = line.decode("utf-8", "replace").rstrip("\n")
        if text.startswith(_LISTENING) and not child.listening.is_set():
            child.url = text[len(_LISTENING) :].strip()
            child.listening.set()
        try:
            print(f"[{child.name}] {text}", file=out, flush=True)
        except (OSError, ValueError):  # our own stdout is gone: keep draining the pipe
            pass


async def _start(child: Child, env: Mapping[str, str]) -> None:
    child.proc = await asyncio.create_subprocess_exec(
        *child.argv,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches the parent only, which stops them in order
    )
    child.relays = [
        asyncio.create_task(_relay(child.proc.stdout, sys.stdout, child)),
        asyncio.create_task(_relay(child.proc.stderr, sys.stderr, child)),
    ]
    exited = asyncio.create_task(child.proc.wait())
    ready = asyncio.create_task(child.listening.wait())
    done, _ = await asyncio.wait(
        {exited, ready}, timeout=_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    for task in (exited, ready):
        if task not in done:
            task.cancel()
    if ready not in done:
        raise RuntimeError(f"{child.name} did not start (exit code {child.proc.returncode})")


async def _stop(children: Sequence[Child]) -> None:
    running = [c for c in children if c.proc is not None and c.proc.returncode is None]
    for child in running:
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)  # each drains (R11)
    for child in running:
        assert child.proc is not None
        try:
            await asyncio.wait_for(child.proc.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
    for child in children:
        if child.relays:
            await asyncio.gather(*child.relays, return_exceptions=True)


def _describe_exit(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"


async def _supervise(children: list[Child], env: Mapping[str, str], banner: Sequence[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for child in children:  # one at a time: the first clears (R10) before others register
            await _start(child, env)
        print(f"wsm: {len(children)} holders are serving, sharing one state store:", *banner,
              sep="\n  ", flush=True)  # fmt: skip
        for child in children:
            assert child.proc is not None
            print(f"  {child.name}  pid {child.proc.pid:<8} {child.url}", flush=True)
        print(
            "wsm: kill -TERM <pid> drains one (its connections move at once); kill -9 <pid> "
            "crashes one (peers reclaim after the stale threshold + a reclaim interval); "
            "Ctrl-C stops all",
            flush=True,
        )
        waits = {asyncio.create_task(c.proc.wait()): c for c in children if c.proc is not None}
        stopper = asyncio.create_task(stop.wait())
        while waits and not stop.is_set():
            done, _ = await asyncio.wait({*waits, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in waits:
                    child = waits.pop(task)
                    code = task.result()
                    print(f"wsm: {child.name} {_describe_exit(code)}; "
                          f"{len(waits)} still serving", flush=True)  # fmt: skip
        stopper.cancel()
        for task in waits:
            task.cancel()
        return 0 if stop.is_set() else 1
    except RuntimeError as exc:
        print(f"wsm: start-up failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await _stop(children)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print("wsm: every holder has stopped", flush=True)


def run_instances(
    settings: Settings,
    *,
    count: int,
    base_argv: Sequence[str],
    overrides: Mapping[str, str],
    environ: Mapping[str, str],
    banner: Sequence[str] = (),
) -> int:
    """Run ``count`` holder processes until stopped (module doc); blocks; the exit code.

    Args:
        base_argv: the child command up to its options (``python -m wsmanager.cli serve
            --data-dir D --host H [--appsettings P]``).
        overrides: the parent's command-line settings, passed on with ``--set``.

    Raises:
        ConfigError: bad instance count, or ports past 65535.
    """
    children = []
    for index in range(1, count + 1):
        argv = list(base_argv)
        for key, value in {**overrides, **child_overrides(settings, index, count)}.items():
            argv += ["--set", f"{key}={value}"]
        children.append(Child(f"wsm-{index}", argv))
    env = {**environ, "PYTHONUNBUFFERED": "1"}
    return asyncio.run(_supervise(children, env, banner))


def serve_argv(data_dir: Path, host: str, appsettings: str | None) -> list[str]:
    """The child command line before its ``--set`` options."""
    argv = [sys.executable, "-m", "wsmanager.cli", "serve", "--data-dir", str(data_dir)]
    argv += ["--host", host]
    if appsettings:
        argv += ["--appsettings", appsettings]
    return argv
