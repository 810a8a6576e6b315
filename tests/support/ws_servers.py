"""Real WebSocket servers on loopback for the manager's tests, and a harness around a manager.

:class:`WsServer` is one aiohttp server whose behaviour is chosen by path:

==============  ==================================================================================
``/echo``       echoes every frame with its type (so a correlated prefix comes back)
``/close``      closes with 1000 right after the handshake
``/silent``     reads everything, never answers (aiohttp still answers pings)
``/deaf``       reads everything, answers nothing, not even pings (a dead peer for keepalive)
``/fragments``  on any message, sends: a Text message in 3 fragments, a Binary message in 2
                fragments, then one plain Binary frame (raw RFC 6455 frames, FIN bit controlled)
``/flood?n=N``  on any message, sends N Text frames ``"0".."N-1"`` in order
``/stall``      never reads: once the TCP buffers are full, writes to it block
``/reject``     answers HTTP 403 instead of upgrading
==============  ==================================================================================

``push_all(data)`` sends a frame to every open socket from the server side; ``close_codes``
records the close code of every socket that ended (what the client sent: 1000, 1001...).

``stop()`` closes every open socket and stops listening; ``start()`` listens again on the same
port, so reconnect tests can take the server away and bring it back at the same URL.
``drop_all(code)`` closes the open sockets but keeps listening.

:class:`NodeWsServer` runs the npm ``ws`` package (a strict third-party server that closes with
1007 on invalid UTF-8 in a Text frame) from ``tests/support/node_ws``; :func:`ensure_node_ws`
installs it with npm when ``node_modules`` is missing.

:class:`Harness` builds a started :class:`ConnectionManager` on a memory store (or one given),
the in-process publisher (or one given), and a session with ``TCPConnector(limit=0)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from wsmanager.adapters.inproc import InProcessPublisher, Subscription
from wsmanager.adapters.memory import MemoryStateStore
from wsmanager.clock import SystemClock
from wsmanager.config import Settings
from wsmanager.core.model import ConnectionStatus, Owner, new_incarnation
from wsmanager.holder.audit import AuditLog
from wsmanager.holder.events import LIFECYCLE_TOPIC
from wsmanager.holder.manager import ConnectionManager
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.ownership import OwnershipService
from wsmanager.ports import Clock, Message, Publisher, StateStore

__all__ = [
    "NODE_WS_DIR",
    "Harness",
    "NodeWsServer",
    "WsServer",
    "ensure_node_ws",
    "eventually",
    "raw_frame",
    "make_settings",
]

NODE_WS_DIR = Path(__file__).parent / "node_ws"
#: Guard against hangs only (never a performance assertion): generous on purpose.
HANG_GUARD = 15.0


def raw_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One unmasked (server-to-client) RFC 6455 frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([size])
    elif size < 1 << 16:
        head += bytes([126]) + struct.pack("!H", size)
    else:
        head += bytes([127]) + struct.pack("!Q", size)
    return head + payload


class WsServer:
    """An aiohttp WebSocket server on 127.0.0.1 (paths in the module doc)."""

    def __init__(self) -> None:
        self.port = 0
        self.handshakes = 0
        self.received: list[tuple[WSMsgType, bytes | str]] = []
        self.sockets: set[web.WebSocketResponse] = set()
        self.close_codes: list[int | None] = []
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/echo", self._echo)
        app.router.add_get("/close", self._close)
        app.router.add_get("/silent", self._silent)
        app.router.add_get("/deaf", self._deaf)
        app.router.add_get("/fragments", self._fragments)
        app.router.add_get("/flood", self._flood)
        app.router.add_get("/stall", self._stall)
        app.router.add_get("/reject", self._reject)
        self._app = app

    def url(self, path: str = "/echo") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def drop_all(self, code: int = 1001) -> None:
        """Close every open socket from the server side (keep listening)."""
        await asyncio.gather(*(ws.close(code=code) for ws in list(self.sockets)))

    async def stop(self) -> None:
        """Close every socket (1001) and stop listening."""
        await self.drop_all(1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def push_all(self, data: str | bytes) -> None:
        """Send one frame (Text for str, Binary for bytes) to every open socket."""
        for ws in list(self.sockets):
            if isinstance(data, str):
                await ws.send_str(data)
            else:
                await ws.send_bytes(data)

    async def __aenter__(self) -> WsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _open(self, request: web.Request, **kwargs: Any) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(timeout=1.0, **kwargs)  # close handshake: don't linger
        await ws.prepare(request)
        self.handshakes += 1
        self.sockets.add(ws)
        return ws

    async def _each(
        self, ws: web.WebSocketResponse, reply: Callable[[aiohttp.WSMessage], Awaitable[None]]
    ) -> web.WebSocketResponse:
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self.received.append((msg.type, msg.data))
                    await reply(msg)
        finally:
            self.sockets.discard(ws)
            self.close_codes.append(ws.close_code)
        return ws

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)

        async def echo(msg: aiohttp.WSMessage) -> None:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            else:
                await ws.send_bytes(msg.data)

        return await self._each(ws, echo)

    async def _close(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        await ws.close(code=1000, message=b"bye")
        self.sockets.discard(ws)
        return ws

    async def _silent(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)

        async def nothing(msg: aiohttp.WSMessage) -> None:
            return None

        return await self._each(ws, nothing)

    async def _deaf(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request, autoping=False)

        async def nothing(msg: aiohttp.WSMessage) -> None:
            return None  # pings arrive as PING messages here and are ignored

        return await self._each(ws, nothing)

    async def _fragments(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        transport = request.transport
        assert transport is not None

        async def burst(msg: aiohttp.WSMessage) -> None:
            for frame in (
                raw_frame(0x1, "héllo ".encode(), fin=False),  # Text, first fragment
                raw_frame(0x0, b"fragmented ", fin=False),  # continuation
                raw_frame(0x0, "wörld".encode(), fin=True),  # last fragment
                raw_frame(0x2, b"\x00\x01", fin=False),  # Binary, first fragment
                raw_frame(0x0, b"\xfe\xff", fin=True),
                raw_frame(0x2, b"\x80binary"),  # one unfragmented Binary frame
            ):
                transport.write(frame)

        return await self._each(ws, burst)

    async def _flood(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        count = int(request.query.get("n", "100"))

        async def flood(msg: aiohttp.WSMessage) -> None:
            for i in range(count):
                await ws.send_str(str(i))

        return await self._each(ws, flood)

    async def _stall(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        try:
            await asyncio.Event().wait()  # never read: aiohttp stops reading the transport
        finally:
            self.sockets.discard(ws)
        return ws

    async def _reject(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")


# -- the npm `ws` server ----------------------------------------------------------------------


def ensure_node_ws() -> str | None:
    """Install the npm ``ws`` package into ``tests/support/node_ws`` if it is missing.
    Returns why it cannot be used (no node/npm, install failed), or None when ready."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are needed for the strict `ws` server (apt-get install nodejs npm)"
    if (NODE_WS_DIR / "node_modules" / "ws").is_dir():
        return None
    command = "ci" if (NODE_WS_DIR / "package-lock.json").exists() else "install"
    done = subprocess.run(
        [npm, command, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_WS_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return f"npm {command} failed in {NODE_WS_DIR}: {done.stderr.strip()[-500:]}"
    return None


class NodeWsServer:
    """``node server.js``: the npm ``ws`` echo server on a free loopback port."""

    def __init__(self) -> None:
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> NodeWsServer:
        node = shutil.which("node")
        assert node is not None
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(NODE_WS_DIR / "server.js"),
            cwd=NODE_WS_DIR,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_ENV": "test"},
        )
        assert self._proc.stdout is not None
        async with asyncio.timeout(HANG_GUARD):
            line = await self._proc.stdout.readline()
        self.port = int(json.loads(line)["port"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()


# -- the manager harness ----------------------------------------------------------------------


def make_settings(**overrides: str) -> Settings:
    """Settings for tests: loopback allowed, tiny reconnect delays, a short keepalive."""
    environ = {
        "HOSTNAME": "holder-a",
        "AllowedTargetHosts": "127.0.0.1",
        "ReconnectMaxAttempts": "3",
        "ReconnectBaseDelayMs": "5",
        "MaxReconnectDelayMs": "20",
        "DefaultTimeoutMs": "5000",
        "WebSocketHeartbeatSeconds": "5",
        **overrides,
    }
    return Settings.load(environ=environ)


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until it returns something truthy (awaiting it if needed)."""
    async with asyncio.timeout(HANG_GUARD):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.005)
    raise AssertionError(what)  # pragma: no cover (the timeout raises first)


class Harness:
    """A started manager on real sockets; lifecycle events collected from the start."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        store: StateStore | None = None,
        publisher: Publisher | None = None,
        clock: Clock | None = None,
        instance_id: str = "holder-a",
        **manager_kwargs: Any,
    ) -> None:
        self.settings = settings or make_settings()
        self.store = store or MemoryStateStore(key_prefix=f"t-{uuid.uuid4().hex}:")
        self.publisher: Publisher = publisher or InProcessPublisher(queue_size=100_000)
        self.clock = clock or SystemClock()
        self.instance_id = instance_id
        self.audit_lines: list[str] = []
        self.metrics = HolderMetrics()
        self._kwargs = {"health_interval": 0.05, **manager_kwargs}
        self.lifecycle: Subscription | None = None
        self.lifecycle_seen: list[Message] = []

    async def __aenter__(self) -> Harness:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        me = Owner(self.instance_id, new_incarnation(self.clock.now(), uuid.uuid4().hex[:8]))
        self.ownership = OwnershipService(
            self.store, me=me, policy=self.settings.liveness_policy(), clock=self.clock
        )
        if isinstance(self.publisher, InProcessPublisher):
            self.lifecycle = self.publisher.subscribe(LIFECYCLE_TOPIC)
        self.manager = ConnectionManager(
            self.settings,
            self.ownership,
            self.publisher,
            session=self.session,
            clock=self.clock,
            audit=AuditLog(self.audit_lines.append),
            metrics=self.metrics,
            **self._kwargs,
        )
        await self.manager.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.manager.stop()
        await self.session.close()
        await self.publisher.close()

    async def connect(self, url: str, **kwargs: Any) -> str:
        record = await self.manager.connect(url, correlation_id="test", **kwargs)
        return record.id

    async def status(self, connection_id: str) -> ConnectionStatus:
        return (await self.manager.get(connection_id)).status

    async def wait_status(self, connection_id: str, status: ConnectionStatus) -> None:
        async def reached() -> bool:
            return await self.status(connection_id) is status

        await eventually(reached, f"{connection_id} never reached {status}")

    async def settle(self) -> None:
        """Wait until the queued lifecycle events have been handed to the publisher."""
        await self.manager.lifecycle.flush(HANG_GUARD)

    async def events(
        self, connection_id: str | None = None, until: str | None = None, count: int = 1
    ) -> list[dict[str, Any]]:
        """Lifecycle events so far (of one connection, or all), reading on until ``count``
        events of kind ``until`` have arrived."""
        lifecycle = self.lifecycle
        assert lifecycle is not None, "lifecycle events are collected with inproc only"

        def selected() -> list[dict[str, Any]]:
            out = []
            for message in self.lifecycle_seen:
                data = json.loads(message.data)
                if connection_id is None or data["connection_id"] == connection_id:
                    kind = message.attributes["type"].rsplit(".", 1)[1]
                    out.append({"kind": kind, **data})
            return out

        async with asyncio.timeout(HANG_GUARD):
            while until is not None and [e["kind"] for e in selected()].count(until) < count:
                self.lifecycle_seen.append(await anext(lifecycle))
        while lifecycle.pending():
            self.lifecycle_seen.append(await anext(lifecycle))
        return selected()

    async def kinds(
        self, connection_id: str | None = None, until: str | None = None, count: int = 1
    ) -> list[str]:
        return [e["kind"] for e in await self.events(connection_id, until, count)]
