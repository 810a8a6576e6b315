"""A cluster of real ``wsm holder`` OS processes on one real Redis, for fault tests and benchmarks.

Pieces (none of them needs pytest, so ``bench/cluster_*.py`` use them too):

* :class:`HolderProcess`: one ``wsm holder`` subprocess (the production entry point) with its
  environment (``HOSTNAME``, ``HttpPort``, ``WSM_STATE_URL``/``WSM_PUBSUB_URL`` on Redis,
  ``WSM_INTERNAL_TOKEN``, short liveness intervals). Waits for ``/ready``; can be killed with
  SIGKILL (a crashed pod), paused and resumed (SIGSTOP/SIGCONT: a GC pause or a frozen VM), or
  drained (SIGTERM). stdout and stderr go to a log file, whose tail is shown when a test fails.
* :class:`RecordingServer`: a loopback WebSocket server on its own thread and event loop (so it
  keeps serving whatever the test's loop does), recording every socket (which logical
  connection it belongs to, from the ``tag`` query parameter; when it opened and closed; its
  close code) and every frame it received, with arrival times. It echoes frames (so correlated
  Sends get their reply) and can push frames to every open socket periodically (inbound traffic
  for the holders to publish). :meth:`RecordingServer.resolve_pids` maps open sockets to the
  holder *process* at the other end (Linux ``/proc``): the fencing-aware view, which says which
  process, hence which owner, wrote each frame.
* :class:`StoreView`: reads the state store the holders share (records, global and per-owner
  indexes, heartbeats) and the topic streams, and :meth:`StoreView.ownership_problems` checks
  "every connection owned exactly once" (brief §8) against the live holders.
* :class:`Cluster`: all of the above for one test, in one key namespace (``WSM_KEY_PREFIX``).
* :class:`DurableRedis`: a ``redis-server`` with an append-only file (``appendfsync always``)
  in its own directory, so data survives a crash and a restart on the same port, as a
  production Redis holding state would.

Waits use :func:`settle`: poll a check until it reports no problem, with a generous deadline
that only guards against hanging; nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from redis.asyncio import Redis

from tests.support.redis_server import free_port, redis_answers
from wsmanager.adapters.redis import RedisStateStore
from wsmanager.core import keys
from wsmanager.core.model import ConnectionRecord, Heartbeat

__all__ = [
    "FAST",
    "LIFECYCLE_TOPIC",
    "TOKEN",
    "Cluster",
    "Conn",
    "DurableRedis",
    "HolderProcess",
    "RecordingServer",
    "SocketLog",
    "StoreView",
    "holder_environ",
    "settle",
]

TOKEN = "cluster-test-token-0123456789abcdef"
LIFECYCLE_TOPIC = "websocketmanager.lifecycle"
RECLAIMED = "com.virtufin.websocketmanager.lifecycle.reclaimed"
#: Error codes the API marks retryable (core.errors): a caller tries again.
RETRYABLE = ("ABORTED", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")

#: Short liveness intervals (seconds) for tests: bound = stale + reclaim + 2 s = 4 s.
FAST: dict[str, str] = {
    "INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "0.2",
    "INSTANCE_DISCOVERY_INTERVAL_SECONDS": "0.5",
    "INSTANCE_STALE_THRESHOLD_SECONDS": "1.5",
    "STALE_CONNECTION_TTL_SECONDS": "1.5",
    "RECLAIM_INTERVAL_SECONDS": "0.5",
}

#: Only these are taken from the caller's environment: a stray WSM_* or HOSTNAME of the
#: machine running the tests must not leak into the holders.
_PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV")


def holder_environ(
    redis_url: str, prefix: str, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a test holder (without ``HOSTNAME`` and ports, set per process)."""
    env = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "WSM_STATE_URL": redis_url,
            "WSM_PUBSUB_URL": redis_url,
            "WSM_KEY_PREFIX": prefix,
            "WSM_INTERNAL_TOKEN": TOKEN,
            "WSM_HTTP_HOST": "127.0.0.1",
            "AllowedTargetHosts": "127.0.0.1",
            "ReconnectMaxAttempts": "20",
            "ReconnectBaseDelayMs": "50",
            "MaxReconnectDelayMs": "500",
            "DefaultTimeoutMs": "5000",
            "Logging__LogLevel__Default": "Information",
            **FAST,
        }
    )
    env.update(overrides or {})
    return env


# -- waiting -----------------------------------------------------------------------------------

Check = Callable[[], Awaitable[Sequence[str]]]


async def settle(check: Check, what: str, *, timeout: float = 60.0, every: float = 0.05) -> float:
    """Poll ``check`` (it returns the problems still seen) until it returns none.

    Returns the seconds it took. ``timeout`` only guards against hanging (it asserts no speed);
    on timeout the last problems seen are in the AssertionError.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    problems: Sequence[str] = ["(never checked)"]
    while True:
        problems = await check()
        if not problems:
            return loop.time() - started
        if loop.time() - started > timeout:
            shown = "\n  ".join(list(problems)[:15])
            more = f"\n  … and {len(problems) - 15} more" if len(problems) > 15 else ""
            raise AssertionError(
                f"gave up after {timeout:g} s waiting for {what}:\n  {shown}{more}"
            )
        await asyncio.sleep(every)


# -- holder processes --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int  # 0: no HTTP answer at all (refused, reset, timed out)
    body: Any

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


class HolderProcess:
    """One ``wsm holder`` OS process (module doc). ``name`` is its ``HOSTNAME``."""

    def __init__(
        self,
        name: str,
        environ: Mapping[str, str],
        log_dir: Path,
        session: aiohttp.ClientSession,
    ) -> None:
        self.name = name
        self.environ = dict(environ)
        self.log_dir = log_dir
        self.session = session
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.incarnation: str | None = None
        self.paused = False
        self._log_file: Any = None
        self._starts = 0
        self.connect_retries = 0

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "down"
        return f"HolderProcess({self.name!r}, port={self.port}, pid={self.pid}, {state})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def owner(self) -> tuple[str, str]:
        assert self.incarnation is not None, f"{self.name} never became ready"
        return self.name, self.incarnation

    def spawn(self) -> None:
        """Start the process (a new incarnation if it ran before). Does not wait."""
        self.close()
        self._starts += 1
        self.port = free_port()
        grpc = self.port + 1 if self.port < 65535 else self.port - 1
        env = {**self.environ, "HOSTNAME": self.name, "HttpPort": str(self.port),
               "GrpcPort": str(grpc)}  # fmt: skip
        self.log_path = self.log_dir / f"holder-{self.name}-{self._starts}.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        self.incarnation = None
        self.paused = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsmanager.cli", "holder", "--host", "127.0.0.1"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our signals go to this pid only, never to the test
        )

    async def wait_ready(self, timeout: float = 60.0) -> HolderProcess:
        """Wait until ``/ready`` answers 200, then learn the incarnation from ``/health``."""

        async def check() -> list[str]:
            if not self.running:
                raise AssertionError(
                    f"holder {self.name} exited with {self.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            reply = await self.call("GET", "/ready", timeout=2.0)
            return [] if reply.status == 200 else [f"/ready: {reply.status} {reply.body}"]

        await settle(check, f"holder {self.name} to be ready", timeout=timeout, every=0.1)
        health = await self.call("GET", "/health")
        assert health.status == 200, health
        assert health.body["instance_id"] == self.name, health.body
        self.incarnation = str(health.body["incarnation"])
        return self

    async def start(self, timeout: float = 60.0) -> HolderProcess:
        """Spawn and wait for readiness; retries once if the chosen port was taken meanwhile."""
        for attempt in range(3):
            self.spawn()
            try:
                return await self.wait_ready(timeout)
            except AssertionError:
                if attempt < 2 and "address already in use" in self.log_tail().lower():
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- signals ---------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: a crashed pod. Nothing runs in the process after this."""
        self._signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(30)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (its sockets stay open, the kernel still buffers)."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        """SIGTERM: what Kubernetes sends a pod it stops (R11: the holder drains)."""
        self._signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        proc = self.proc

        async def check() -> list[str]:
            return [] if proc.poll() is not None else [f"{self.name} still running"]

        await settle(check, f"holder {self.name} to exit", timeout=timeout)
        return proc.returncode

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def close(self) -> None:
        """Make sure the process is gone (SIGKILL works on a stopped process too)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.paused = False

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None:
            return "(not started)"
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    # -- HTTP --------------------------------------------------------------------------------

    async def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0
    ) -> Reply:
        """One authenticated request; ``Reply(0, repr(error))`` if no HTTP answer came."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with self.session.request(
                method,
                self.url + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                text = await response.text()
                try:
                    data: Any = json.loads(text) if text else None
                except ValueError:
                    data = text
                return Reply(response.status, data)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Reply(0, repr(exc))

    async def connect(self, url: str, *, auto_reconnect: bool = True) -> str:
        """Connect through this holder. An answer the API marks retryable (ABORTED: the store's
        indexes were contended) is retried, as a Knative/Dapr caller would; those retries are
        counted in :attr:`connect_retries` so tests can report them."""
        body = {"url": url, "auto_reconnect": auto_reconnect}
        for attempt in range(10):
            reply = await self.call("POST", "/v1/connect", body)
            if reply.code not in RETRYABLE or attempt == 9:
                break
            self.connect_retries += 1
            await asyncio.sleep(0.05 * (attempt + 1) * random.random())
        assert reply.status == 200, f"connect via {self.name}: {reply}"
        assert reply.body["status"] == "CONNECTED", reply.body
        return str(reply.body["connection_id"])


# -- the recording WebSocket server ------------------------------------------------------------


@dataclass
class SocketLog:
    """One server-side socket: which logical connection (``tag``), when, and what arrived."""

    sid: int
    tag: str
    peer_port: int
    opened_at: float  # time.monotonic() of this process
    closed_at: float | None = None
    close_code: int | None = None
    pid: int | None = None  # the holder process at the other end, once resolved
    frames: list[tuple[float, str | bytes]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def frames_after(self, moment: float) -> list[str | bytes]:
        return [data for at, data in self.frames if at > moment]


class RecordingServer:
    """The loopback WebSocket server of the module doc, on its own thread and event loop.

    URL per logical connection: ``ws://127.0.0.1:PORT/ws?tag=TAG``. Every frame received is
    echoed back as it came (Text or Binary). ``push_interval`` seconds (None: off) apart, every
    open socket is sent ``push:<tag>:<sid>:<n>``.
    """

    def __init__(self, *, push_interval: float | None = None, echo: bool = True) -> None:
        self.push_interval = push_interval
        self.echo = echo
        self.port = 0
        self._lock = threading.Lock()
        self._logs: list[SocketLog] = []
        self._live: dict[int, web.WebSocketResponse] = {}
        self._sids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def url(self, tag: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?tag={tag}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RecordingServer:
        self._thread = threading.Thread(target=self._run, name="recording-ws-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("recording WebSocket server did not start")
        if self._error is not None:
            raise RuntimeError(f"recording WebSocket server failed: {self._error!r}")
        return self

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start(); a server thread must not raise
            self._error = exc
            self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/ws", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        self.port = int(runner.addresses[0][1])
        pusher = asyncio.create_task(self._push_loop())
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
            with self._lock:
                live = list(self._live.values())
            await asyncio.gather(*(self._close(ws) for ws in live))
            await runner.cleanup()

    @staticmethod
    async def _close(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await ws.close(code=1001)

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, autoping=True, max_msg_size=0, timeout=1.0)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        log = SocketLog(
            sid=next(self._sids),
            tag=request.query.get("tag", ""),
            peer_port=int(peer[1]) if peer else 0,
            opened_at=time.monotonic(),
        )
        with self._lock:
            self._logs.append(log)
            self._live[log.sid] = ws
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                with self._lock:
                    log.frames.append((time.monotonic(), msg.data))
                if self.echo:
                    if msg.type is WSMsgType.TEXT:
                        await ws.send_str(msg.data)
                    else:
                        await ws.send_bytes(msg.data)
        except Exception:  # a peer that vanished mid-echo: the socket just ends
            pass
        finally:
            with self._lock:
                log.closed_at = time.monotonic()
                log.close_code = ws.close_code
                self._live.pop(log.sid, None)
        return ws

    async def _push_loop(self) -> None:
        for n in itertools.count(1):
            interval = self.push_interval
            await asyncio.sleep(interval or 0.05)
            if not interval:
                continue
            with self._lock:
                targets = [
                    (log, self._live[log.sid]) for log in self._logs if log.sid in self._live
                ]
            await asyncio.gather(*(self._push(log, ws, n) for log, ws in targets))

    @staticmethod
    async def _push(log: SocketLog, ws: web.WebSocketResponse, n: int) -> None:
        if ws.closed:
            return
        with contextlib.suppress(Exception):  # a full buffer (a paused peer) or a closed socket
            async with asyncio.timeout(1.0):
                await ws.send_str(f"push:{log.tag}:{log.sid}:{n}")

    # -- queries (any thread) ----------------------------------------------------------------

    def sockets(self, tags: Iterable[str] | None = None, *, frames: bool = True) -> list[SocketLog]:
        """Copies of the socket logs (of ``tags`` only, when given), oldest first."""
        wanted = None if tags is None else set(tags)
        with self._lock:
            return [
                replace(log, frames=list(log.frames) if frames else [])
                for log in self._logs
                if wanted is None or log.tag in wanted
            ]

    def open_by_tag(self, tags: Iterable[str] | None = None) -> dict[str, list[SocketLog]]:
        """Open sockets per tag (without their frames)."""
        out: dict[str, list[SocketLog]] = {}
        for log in self.sockets(tags, frames=False):
            if log.open:
                out.setdefault(log.tag, []).append(log)
        return out

    def resolve_pids(self, pids: Iterable[int | None]) -> int:
        """Record which of ``pids`` holds the client end of each open socket; returns how many
        open sockets are now resolved (Linux ``/proc``; 0 elsewhere)."""
        owners = client_socket_pids(self.port, [p for p in pids if p is not None])
        resolved = 0
        with self._lock:
            for log in self._logs:
                if log.closed_at is None and log.peer_port in owners:
                    log.pid = owners[log.peer_port]
                if log.closed_at is None and log.pid is not None:
                    resolved += 1
        return resolved


def client_socket_pids(server_port: int, pids: Sequence[int]) -> dict[int, int]:
    """Local port -> pid for the TCP sockets of ``pids`` connected to ``server_port``."""
    by_inode: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, remote, inode = parts[1], parts[2], parts[9]
            if inode != "0" and int(remote.rsplit(":", 1)[1], 16) == server_port:
                by_inode[inode] = int(local.rsplit(":", 1)[1], 16)
    out: dict[int, int] = {}
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                port = by_inode.get(target[8:-1])
                if port is not None:
                    out[port] = pid
    return out


# -- the shared store and the streams ----------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One stream entry: its id and the CloudEvent it holds."""

    entry_id: str
    event: dict[str, Any]

    @property
    def websocketid(self) -> str | None:
        value = self.event.get("websocketid")
        return str(value) if value is not None else None

    @property
    def owner(self) -> tuple[str | None, str | None]:
        return self.event.get("ownerinstance"), self.event.get("ownerincarnation")

    @property
    def token(self) -> int | None:
        value = self.event.get("fencingtoken")
        return int(value) if value is not None else None


class StoreView:
    """Read-only look at one cluster namespace: records, indexes, heartbeats, streams."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.prefix = prefix
        self.store = RedisStateStore(redis_url, key_prefix=prefix)
        self.redis = Redis.from_url(redis_url)

    async def close(self) -> None:
        await self.store.close()
        await self.redis.aclose()

    async def records(self, ids: Iterable[str]) -> dict[str, ConnectionRecord]:
        wanted = list(ids)
        raw = await self.store.bulk_get([keys.connection_key(i) for i in wanted])
        out: dict[str, ConnectionRecord] = {}
        for value in raw.values():
            record = ConnectionRecord.from_json(value.value)
            out[record.id] = record
        return out

    async def _json(self, key: str, default: Any) -> Any:
        raw = await self.store.get(key)
        return default if raw is None else json.loads(raw.value)

    async def global_index(self) -> list[str]:
        return list(await self._json(keys.CONNECTION_INDEX, []))

    async def instance_index(self) -> list[str]:
        return list(await self._json(keys.INSTANCE_INDEX, []))

    async def owner_index(self, instance_id: str) -> dict[str, str]:
        return dict(await self._json(keys.owner_index_key(instance_id), {}))

    async def heartbeat(self, instance_id: str) -> Heartbeat | None:
        raw = await self.store.get(keys.heartbeat_key(instance_id))
        return None if raw is None else Heartbeat.from_json(raw.value)

    async def key_names(self, pattern: str) -> list[str]:
        """State keys (without the prefix) matching a glob, e.g. ``websocketmanager.*``."""
        names = []
        async for raw in self.redis.scan_iter(match=self.prefix + pattern, count=1000):
            names.append(raw.decode()[len(self.prefix) :])
        return sorted(names)

    async def ownership_problems(
        self,
        ids: Iterable[str],
        live: Mapping[str, str],
        *,
        status: str | None = "CONNECTED",
        extra_instances: Iterable[str] = (),
    ) -> list[str]:
        """Everything that stops "each of ``ids`` is owned exactly once by a live holder".

        ``live`` maps instance id -> incarnation of the holders alive now. Checked per id: the
        record exists and is in the global index; its owner is a live incarnation; exactly one
        per-owner index lists it (the owner's, with the owner's incarnation), not ``_unowned``;
        and (unless ``status`` is None) its status.
        """
        wanted = list(ids)
        records = await self.records(wanted)
        glob = set(await self.global_index())
        names = set(await self.instance_index()) | set(live) | set(extra_instances)
        names.add(keys.UNOWNED)
        indexes = {name: await self.owner_index(name) for name in sorted(names)}
        problems: list[str] = []
        for cid in wanted:
            record = records.get(cid)
            if record is None:
                problems.append(f"{cid}: record missing")
                continue
            if cid not in glob:
                problems.append(f"{cid}: not in the global index")
            listed = [name for name, index in indexes.items() if cid in index]
            if record.owner is None:
                problems.append(f"{cid}: ownerless (token {record.fencing_token}), in {listed}")
                continue
            who = record.owner.instance_id
            if live.get(who) != record.owner.incarnation:
                problems.append(f"{cid}: owned by {record.owner}, not a live holder")
            if listed != [who]:
                problems.append(f"{cid}: owner {who} but listed in owner indexes {listed}")
            elif indexes[who][cid] != record.owner.incarnation:
                problems.append(f"{cid}: index of {who} names incarnation {indexes[who][cid]}")
            if status is not None and record.status.value != status:
                problems.append(f"{cid}: status {record.status.value}, want {status}")
        return problems

    # -- streams -----------------------------------------------------------------------------

    async def last_entry_id(self, topic: str) -> str:
        """The id of the newest entry of ``topic``'s stream ("0-0" if none)."""
        newest: Any = await self.redis.xrevrange(topic, count=1)
        return str(newest[0][0].decode()) if newest else "0-0"

    async def events(self, topic: str, after: str = "0-0") -> list[Event]:
        """Every entry of ``topic`` newer than ``after``, parsed (Dapr layout: one ``data``)."""
        out: list[Event] = []
        start = f"({after}"
        while True:
            batch: Any = await self.redis.xrange(topic, min=start, max="+", count=5000)
            for entry_id, fields in batch:
                out.append(Event(entry_id.decode(), json.loads(fields[b"data"])))
            if len(batch) < 5000:
                return out
            start = f"({batch[-1][0].decode()}"

    async def reclaimed_events(self, ids: Iterable[str], after: str = "0-0") -> dict[str, int]:
        """How many ``reclaimed`` lifecycle events each of ``ids`` has after ``after``."""
        wanted = set(ids)
        counts = dict.fromkeys(wanted, 0)
        for event in await self.events(LIFECYCLE_TOPIC, after):
            if event.event.get("type") == RECLAIMED and event.websocketid in wanted:
                counts[str(event.websocketid)] += 1
        return counts


# -- one test's cluster ------------------------------------------------------------------------


@dataclass(frozen=True)
class Conn:
    """A connection a test opened: its id and the server-side tag of its URL."""

    cid: str
    tag: str


class Cluster:
    """Holders, the recording server, a store view and an HTTP session for one test.

    ``overrides`` apply to every holder's environment; :meth:`spawn` takes more per holder.
    """

    def __init__(
        self,
        redis_url: str,
        workdir: Path,
        *,
        overrides: Mapping[str, str] | None = None,
        push_interval: float | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.prefix = f"wsm-cluster-{uuid.uuid4().hex[:12]}:"
        self.overrides = dict(overrides or {})
        self.server = RecordingServer(push_interval=push_interval)
        self.holders: list[HolderProcess] = []
        self.topics: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        self._view: StoreView | None = None
        self._tags = itertools.count(1)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Cluster as an async context manager"
        return self._session

    @property
    def view(self) -> StoreView:
        assert self._view is not None, "use Cluster as an async context manager"
        return self._view

    async def __aenter__(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._view = StoreView(self.redis_url, self.prefix)
        await asyncio.to_thread(self.server.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for holder in self.holders:
            holder.close()
        await asyncio.to_thread(self.server.stop)
        if self._session is not None:
            await self._session.close()
        if self._view is not None:
            with contextlib.suppress(Exception):  # the test's Redis may be gone by now
                await self._view.store.drop_namespace()
                if self.topics:
                    await self._view.redis.delete(*self.topics)
            await self._view.close()

    # -- holders -----------------------------------------------------------------------------

    def environ(self, **extra: str) -> dict[str, str]:
        return holder_environ(self.redis_url, self.prefix, {**self.overrides, **extra})

    def holder(self, name: str, **extra: str) -> HolderProcess:
        """A holder process object (not started); ``extra`` are environment overrides."""
        holder = HolderProcess(name, self.environ(**extra), self.workdir, self.session)
        self.holders.append(holder)
        return holder

    async def spawn(self, *names: str, **extra: str) -> list[HolderProcess]:
        """Start holders ``names`` side by side and wait until every one is ready."""
        made = [self.holder(name, **extra) for name in names]
        await asyncio.gather(*(h.start() for h in made))
        return made

    def live(self) -> dict[str, str]:
        """instance id -> incarnation of every holder process running now (paused included)."""
        return {h.name: h.owner[1] for h in self.holders if h.running and h.incarnation}

    def pids(self) -> list[int]:
        return [h.pid for h in self.holders if h.running and h.pid is not None]

    def log_tails(self, lines: int = 80) -> str:
        parts = []
        for h in self.holders:
            parts.append(f"----- {h.name} ({h.log_path}, rc={h.returncode}) -----")
            parts.append(h.log_tail(lines))
        return "\n".join(parts)

    # -- connections -------------------------------------------------------------------------

    def topic(self) -> str:
        name = f"wsm-cluster-topic-{uuid.uuid4().hex[:12]}"
        self.topics.append(name)
        return name

    def new_tag(self) -> str:
        return f"t{next(self._tags)}"

    async def open(
        self,
        holder: HolderProcess,
        count: int,
        *,
        topic: str | None = None,
        auto_reconnect: bool = True,
        concurrency: int = 16,
    ) -> list[Conn]:
        """Open ``count`` connections through ``holder`` (each its own server tag), and start
        publishing each to ``topic`` when given."""
        tags = [self.new_tag() for _ in range(count)]
        gate = asyncio.Semaphore(concurrency)

        async def one(tag: str) -> Conn:
            async with gate:
                cid = await holder.connect(self.server.url(tag), auto_reconnect=auto_reconnect)
                if topic is not None:
                    path = f"/v1/connections/{cid}/publish"
                    reply = await holder.call("POST", path, {"topic": topic})
                    assert reply.status == 200, f"publish via {holder.name}: {reply}"
                return Conn(cid, tag)

        return list(await asyncio.gather(*(one(tag) for tag in tags)))

    async def tokens(self, conns: Iterable[Conn]) -> dict[str, int]:
        records = await self.view.records(c.cid for c in conns)
        return {cid: r.fencing_token for cid, r in records.items()}

    async def reopened_problems(
        self,
        conns: Sequence[Conn],
        since: float,
        live: Mapping[str, str],
        *,
        owners: Iterable[str] | None = None,
        ignore: Iterable[int] = (),
    ) -> list[str]:
        """Problems left before ``conns`` count as re-owned and re-opened after ``since``:
        owned once by a live holder (among ``owners`` if given), CONNECTED, and exactly one open
        server socket per connection, opened after ``since`` (sockets ``ignore`` d by id aside:
        a paused holder's, which stay open while it is frozen)."""
        skip = set(ignore)
        problems = await self.view.ownership_problems([c.cid for c in conns], live)
        allowed = set(owners) if owners is not None else None
        if allowed is not None and not problems:
            records = await self.view.records(c.cid for c in conns)
            for cid, record in records.items():
                if record.owner is None or record.owner.instance_id not in allowed:
                    problems.append(f"{cid}: owner {record.owner}, want one of {sorted(allowed)}")
        open_now = self.server.open_by_tag(c.tag for c in conns)
        for conn in conns:
            sockets = [s for s in open_now.get(conn.tag, []) if s.sid not in skip]
            fresh = [s for s in sockets if s.opened_at > since]
            if len(sockets) != 1 or len(fresh) != 1:
                problems.append(
                    f"{conn.cid} ({conn.tag}): {len(sockets)} open sockets, {len(fresh)} new"
                )
        return problems


async def send_load(
    targets: Callable[[], Sequence[HolderProcess]],
    conns: Sequence[Conn],
    stop: asyncio.Event,
    *,
    workers: int = 4,
    timeout: float = 5.0,
) -> dict[int, int]:
    """SendRaw ``load:<cid>:<n>`` to random connections through random ``targets()`` until
    ``stop``; returns how many answers had each HTTP status (0: no answer)."""
    counts: dict[int, int] = {}
    sequence = itertools.count()

    async def worker() -> None:
        while not stop.is_set():
            holders = [h for h in targets() if h.running and not h.paused]
            if not holders:
                await asyncio.sleep(0.05)
                continue
            conn = random.choice(conns)
            holder = random.choice(holders)
            body = {"message": f"load:{conn.cid}:{next(sequence)}"}
            reply = await holder.call(
                "POST", f"/v1/connections/{conn.cid}/sendraw", body, timeout=timeout
            )
            counts[reply.status] = counts.get(reply.status, 0) + 1
            if reply.status != 200:
                await asyncio.sleep(0.01)  # don't spin on a dead target

    await asyncio.gather(*(worker() for _ in range(workers)))
    return counts


# -- a Redis that keeps its data across a restart ----------------------------------------------


class DurableRedis:
    """``redis-server`` with ``appendonly yes`` and ``appendfsync always`` in its own directory:
    what a write acknowledged before a crash survives :meth:`kill` + :meth:`start` on the same
    port, as a production Redis holding state is configured to."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH")
        self.executable = exe
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="wsm-durable-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> DurableRedis:
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if redis_answers("127.0.0.1", self.port):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crashed Redis (what was fsynced to the AOF survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"
