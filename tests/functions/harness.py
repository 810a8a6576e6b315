"""Real components for the function tests: holders, an external WebSocket server, and the
functions served by functions-framework in ASGI mode over real HTTP.

* :class:`EchoServer`: an aiohttp WebSocket server on loopback that echoes every frame (so a
  correlated Send's reply is the request itself) and counts handshakes, to prove "exactly one
  connection".
* :class:`Holder`: a real holder app (``wsmanager.holder.app.create_app``) in this process;
  :class:`HolderProcess`: a real ``wsm holder`` subprocess (``HOSTNAME`` set), which a test can
  SIGKILL like a crashed pod.
* :class:`FunctionServer`: every ``functions/<name>/main.py`` loaded by functions-framework's
  own ``create_app`` (which hands async ``aio.http`` functions to its ASGI app), served by
  uvicorn on a free port, one path prefix per function.

Everything shares one Redis, namespaced by a fresh key prefix per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import functions_framework
import uvicorn
from aiohttp import web
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from starlette.types import ASGIApp, Receive, Scope, Send

from wsmanager.config import Settings
from wsmanager.functions.commands import COMMAND_PREFIX, FUNCTIONS

__all__ = [
    "FUNCTIONS_DIR",
    "TOKEN",
    "EchoServer",
    "FunctionServer",
    "Holder",
    "HolderProcess",
    "Response",
    "base_environ",
    "command_event",
    "free_port",
    "until",
]

TOKEN = "functions-test-token"
FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_environ(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Settings shared by holders and functions: one store namespace, fast liveness, and no
    holder sweeps (RECLAIM_INTERVAL_SECONDS 3600), so reclaims in these tests are the
    functions' own."""
    return {
        "WSM_STATE_URL": redis_url,
        "WSM_KEY_PREFIX": prefix,
        "WSM_PUBSUB_URL": "inproc://",
        "WSM_INTERNAL_TOKEN": TOKEN,
        "WSM_HTTP_HOST": "127.0.0.1",
        "AllowedTargetHosts": "127.0.0.1",
        "INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "0.2",
        "INSTANCE_DISCOVERY_INTERVAL_SECONDS": "0.2",
        "INSTANCE_STALE_THRESHOLD_SECONDS": "1",
        "STALE_CONNECTION_TTL_SECONDS": "1",
        "RECLAIM_INTERVAL_SECONDS": "3600",
        **extra,
    }


async def until(check: Callable[[], Awaitable[bool]], what: str, *, timeout: float = 30.0) -> None:
    """Wait for ``check()``; the timeout only guards against hanging, it asserts no speed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


class EchoServer:
    """A WebSocket server that echoes every frame and counts handshakes."""

    def __init__(self) -> None:
        self.handshakes = 0
        self.open = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.handshakes += 1
        self.open += 1
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            self.open -= 1
        return ws

    async def start(self) -> EchoServer:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Holder:
    """A real holder app in this process, listening on its advertised endpoint."""

    def __init__(self, name: str, environ: Mapping[str, str]) -> None:
        from wsmanager.holder.app import create_app

        self.name = name
        self.port = free_port()
        env = {**environ, "HOSTNAME": name, "HttpPort": str(self.port)}
        env["GrpcPort"] = str(self.port + 1 if self.port < 65535 else self.port - 1)
        self.settings = Settings.load(environ=env)
        self.app = create_app(self.settings, token=TOKEN, drain=False)
        self._runner: web.AppRunner | None = None
        self.endpoint = self.settings.advertised_endpoint()

    async def start(self) -> Holder:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    def held(self) -> set[str]:
        """Ids of the connections this holder's manager holds sockets for."""
        from wsmanager.holder.routes_common import HOLDER

        components = self.app[HOLDER].components
        return set() if components is None else set(components.manager.connections)

    async def stop(self) -> None:
        """Stop serving without releasing (drain off): records stay owned by this holder."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


class HolderProcess:
    """A ``wsm holder`` subprocess: the real CLI, killable with SIGKILL like a crashed pod."""

    def __init__(self, name: str, environ: Mapping[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **environ,
            "HOSTNAME": name,
            "HttpPort": str(self.port),
            "GrpcPort": str(self.port + 1 if self.port < 65535 else self.port - 1),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> HolderProcess:
        wsm = Path(sys.executable).with_name("wsm")
        self.proc = subprocess.Popen(
            [str(wsm), "holder", "--host", "127.0.0.1"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"wsm holder {self.name} exited ({self.proc.returncode})")
                try:
                    async with session.get(self.endpoint + "/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, f"holder {self.name} to be ready")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await asyncio.get_running_loop().run_in_executor(None, self.proc.wait)


class _Dispatch:
    """One ASGI app routing ``/<function>/...`` to that function's functions-framework app."""

    def __init__(self, apps: Mapping[str, ASGIApp]) -> None:
        self.apps = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        name = scope["path"].strip("/").split("/", 1)[0]
        await self.apps[name](scope, receive, send)


_APPS: dict[str, ASGIApp] = {}


def framework_apps() -> dict[str, ASGIApp]:
    """Every function loaded by functions-framework's own app factory (once per session)."""
    for name in FUNCTIONS:
        if name not in _APPS:
            source = str(FUNCTIONS_DIR / name / "main.py")
            # create_app is unannotated; for an aio.http function it returns the Starlette app.
            app: ASGIApp = functions_framework.create_app(  # type: ignore[no-untyped-call]
                name, source, "http"
            )
            _APPS[name] = app
    return dict(_APPS)


class Response:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def event(self) -> CloudEvent:
        return from_http(dict(self.headers), self.body)

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:300]!r})"


class FunctionServer:
    """The functions under uvicorn on a free port; ``call`` makes one HTTP request."""

    def __init__(self) -> None:
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> FunctionServer:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            _Dispatch(framework_apps()), log_level="error", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        server = self._server

        async def started() -> bool:
            return server.started

        await until(started, "uvicorn to start")
        self.session = aiohttp.ClientSession()
        return self

    async def call(
        self,
        function: str,
        method: str = "POST",
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        assert self.session is not None
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        url = f"http://127.0.0.1:{self.port}/{function}"
        async with self.session.request(
            method, url, data=body, headers=hdrs, params=params
        ) as resp:
            return Response(resp.status, dict(resp.headers), await resp.read())

    async def event(
        self,
        function: str,
        kind: str,
        data: Any,
        *,
        mode: str = "binary",
        event_id: str | None = None,
        source: str = "/tests/functions",
    ) -> Response:
        headers, body = command_event(kind, data, mode=mode, event_id=event_id, source=source)
        return await self.call(function, body=body, headers=headers)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


def command_event(
    kind: str,
    data: Any,
    *,
    mode: str = "binary",
    event_id: str | None = None,
    source: str = "/tests/functions",
    event_type: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """A command CloudEvent as HTTP headers and body, made by the cloudevents SDK."""
    attributes = {
        "type": event_type or COMMAND_PREFIX + kind,
        "source": source,
        "id": event_id or uuid.uuid4().hex,
        "datacontenttype": "application/json",
    }
    convert = to_binary if mode == "binary" else to_structured
    headers, body = convert(CloudEvent(attributes, data))
    return dict(headers), body
