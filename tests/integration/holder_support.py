"""Real pieces for the holder API tests: loopback WebSocket servers and a running holder app.

:class:`WsServers` is one aiohttp server on loopback with three WebSocket routes:

* ``/echo`` answers every frame with the same frame (so a correlated Send gets its prefix back);
* ``/silent`` records frames and never answers (a Send there times out);
* ``/push`` answers every frame with ``pushed:<frame>`` (an inbound frame that matches no Send).

Every frame any route receives is kept in :attr:`WsServers.received`. :func:`holder_env` runs a
holder app on a real SQLite store and the in-process publisher, with those servers beside it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from wsmanager.adapters.inproc import InProcessPublisher
from wsmanager.adapters.sqlite import SqliteStateStore
from wsmanager.config import Settings
from wsmanager.core import keys
from wsmanager.core.model import ConnectionRecord
from wsmanager.holder.app import create_app
from wsmanager.holder.audit import AuditLog
from wsmanager.ports import StateStore

__all__ = [
    "MAX_MESSAGE",
    "TOKEN",
    "Env",
    "Holder",
    "WsServers",
    "holder_env",
    "holder_settings",
    "running_holder",
    "stored",
    "ws_servers",
]

TOKEN = "test-internal-token-0123456789"


@dataclass
class WsServers:
    base: str = ""
    received: list[str | bytes] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    frame_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/echo") -> str:
        return self.base + path

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        mode = request.match_info["mode"]
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            data: str | bytes = msg.data
            self.received.append(data)
            self.frame_seen.set()
            if mode == "echo":
                await (ws.send_str(data) if isinstance(data, str) else ws.send_bytes(data))
            elif mode == "push":
                text = data if isinstance(data, str) else data.decode("latin-1")
                await ws.send_str("pushed:" + text)
        return ws

    async def wait_frames(self, count: int) -> None:
        while len(self.received) < count:
            self.frame_seen.clear()
            await self.frame_seen.wait()


@asynccontextmanager
async def ws_servers() -> AsyncIterator[WsServers]:
    servers = WsServers()
    app = web.Application()
    app.router.add_get("/{mode:echo|silent|push}", servers.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    servers.base = f"ws://127.0.0.1:{server.port}"
    try:
        yield servers
    finally:
        for ws in servers.sockets:
            await ws.close()
        await server.close()


@dataclass
class Holder:
    """A running holder app and an HTTP client for it (``auth`` headers ready to use)."""

    app: web.Application
    client: TestClient[web.Request, web.Application]
    auth: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {TOKEN}"})

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        raw: bytes | str | None = None,
    ) -> tuple[int, Any]:
        """One request; returns ``(status, parsed JSON or text)``."""
        sent = dict(self.auth if auth else {})
        sent.update(headers or {})
        kwargs: dict[str, Any] = {"headers": sent}
        if raw is not None:
            kwargs["data"] = raw
            sent.setdefault("Content-Type", "application/json")
        elif body is not None:
            kwargs["json"] = body
        async with self.client.request(method, path, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, text


@asynccontextmanager
async def running_holder(app: web.Application) -> AsyncIterator[Holder]:
    server = TestServer(app, host="127.0.0.1")
    client: TestClient[web.Request, web.Application] = TestClient(server)
    await client.start_server()
    try:
        yield Holder(app, client)
    finally:
        await client.close()


MAX_MESSAGE = 4096


def holder_settings(**extra: str) -> Settings:
    """A holder "holder-a" allowed to reach loopback, with a small MaxMessageBytes."""
    environ = {
        "HOSTNAME": "holder-a",
        "AllowedTargetHosts": "127.0.0.1",
        "MaxMessageBytes": str(MAX_MESSAGE),
        **extra,
    }
    return Settings.load(environ=environ)


@dataclass
class Env:
    """A running holder on a real SQLite store and in-process publisher, its audit lines, and
    the loopback WebSocket servers it connects to."""

    holder: Holder
    store: StateStore
    publisher: InProcessPublisher
    audit_lines: list[str]
    servers: WsServers

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.holder.call(method, path, body, **kw)

    async def connect(self, path: str = "/echo", **body: Any) -> str:
        status, answer = await self.call(
            "POST", "/v1/connect", {"url": self.servers.url(path), **body}
        )
        assert status == 200, answer
        assert answer["status"] == "CONNECTED"
        connection_id: str = answer["connection_id"]
        return connection_id

    def audit(self, action: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.audit_lines]
        return [r for r in records if r["action"] == action]


@asynccontextmanager
async def holder_env(
    tmp_path: Path, settings: Settings | None = None, **create: Any
) -> AsyncIterator[Env]:
    """:class:`Env` for one test; ``create`` goes to ``create_app`` (e.g. ``audit``, ``clock``)."""
    store = await SqliteStateStore.open(tmp_path / "state.db", key_prefix="t:")
    publisher = InProcessPublisher()
    lines: list[str] = []
    create.setdefault("audit", AuditLog(lines.append))
    app = create_app(
        settings or holder_settings(), token=TOKEN, store=store, publisher=publisher, **create
    )
    try:
        async with ws_servers() as servers, running_holder(app) as holder:
            yield Env(holder, store, publisher, lines, servers)
    finally:
        await publisher.close()
        await store.close()


async def stored(store: StateStore) -> dict[str, Any]:
    """The connection index and every record, without the times that renewals move."""
    index = await store.get(keys.CONNECTION_INDEX)
    ids: list[str] = json.loads(index.value) if index is not None else []
    raw = await store.bulk_get([keys.connection_key(i) for i in ids])
    records = {}
    for key, value in raw.items():
        data = ConnectionRecord.from_json(value.value).to_dict()
        for moving in ("updated_at", "renewed_at"):
            data.pop(moving)
        records[key] = data
    return {"index": sorted(ids), "records": records}
