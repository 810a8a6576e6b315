"""Several real holders in this process, as one cluster on a real Redis (``test_cluster_*``).

Each :class:`Node` is a complete holder app (``create_app``) listening on its own loopback port
and advertising it (``WSM_HTTP_HOST``/``HttpPort``), with its own Redis store object (one shared
key namespace), its own in-process publisher (so a test sees exactly what *that* holder
published) and its own audit lines. Peers reach each other over real HTTP.

* :meth:`Node.crash` stops a holder without draining: its sockets close, its records stay owned
  by it and its heartbeat goes stale, as after a crash (R4/R5).
* :meth:`Node.unreachable` stops listening while the holder keeps running (and heartbeating):
  an owner that is alive but does not answer (R3).
* :meth:`Node.stop` shuts down gracefully (R11 drain when the node was made with ``drain``).

Timings are short (heartbeat 0.2 s, stale after 1.5 s) and periodic sweeps are off unless a test
turns them on, so each test decides which mechanism acts. Waits have generous deadlines and
never assert how long something took.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.redis_server import free_port
from wsmanager.adapters.inproc import InProcessPublisher, Subscription
from wsmanager.adapters.redis import RedisStateStore
from wsmanager.config import Settings
from wsmanager.core import keys
from wsmanager.core.model import ConnectionRecord, ConnectionStatus, Heartbeat, Owner
from wsmanager.core.ownership import is_reclaimable
from wsmanager.holder.app import create_app
from wsmanager.holder.audit import AuditLog
from wsmanager.holder.bootstrap import Components
from wsmanager.holder.events import LIFECYCLE_TOPIC
from wsmanager.holder.routes_common import HOLDER

__all__ = ["FAST", "TOKEN", "ClusterEnv", "Node", "cluster_env", "until"]

TOKEN = "cluster-test-token-0123456789"
#: Deadline for a condition to come true (a hang guard, never a timing assertion).
DEADLINE = 60.0

FAST: dict[str, str] = {
    "INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "0.2",
    "INSTANCE_DISCOVERY_INTERVAL_SECONDS": "0.2",
    "INSTANCE_STALE_THRESHOLD_SECONDS": "1.5",
    "STALE_CONNECTION_TTL_SECONDS": "1.5",
    "RECLAIM_INTERVAL_SECONDS": "3600",
    "AllowedTargetHosts": "127.0.0.1",
    "WSM_HTTP_HOST": "127.0.0.1",
    "ReconnectBaseDelayMs": "20",
    "MaxReconnectDelayMs": "100",
    "DefaultTimeoutMs": "5000",
}


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = await check()
                if result:
                    return result
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


@dataclass(eq=False)
class Node:
    """One holder of the cluster (module doc)."""

    name: str
    settings: Settings
    store: RedisStateStore
    drain: bool
    publisher: InProcessPublisher = field(default_factory=InProcessPublisher)
    audit_lines: list[str] = field(default_factory=list)
    app: web.Application | None = None
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None
    lifecycle: Subscription | None = None

    @property
    def port(self) -> int:
        return self.settings.http_port

    @property
    def endpoint(self) -> str:
        return self.settings.advertised_endpoint()

    async def start(self) -> Node:
        self.lifecycle = self.publisher.subscribe(LIFECYCLE_TOPIC)
        self.app = create_app(
            self.settings,
            token=TOKEN,
            store=self.store,
            publisher=self.publisher,
            audit=AuditLog(self.audit_lines.append),
            drain=self.drain,
        )
        self.runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await self.site.start()
        return self

    @property
    def components(self) -> Components:
        assert self.app is not None
        components = self.app[HOLDER].components
        assert components is not None, f"{self.name} is not running"
        return components

    @property
    def owner(self) -> Owner:
        return self.components.owner

    def held(self) -> set[str]:
        return set(self.components.manager.connections)

    async def unreachable(self) -> None:
        """Stop listening; the holder keeps running and heartbeating (alive, unreachable)."""
        assert self.site is not None
        await self.site.stop()

    async def stop(self) -> None:
        """Shut down (with the R11 drain if this node was made with ``drain``)."""
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    async def crash(self) -> None:
        """Stop without draining: records stay owned by this (now dead) instance."""
        assert not self.drain, "a crash never drains: make this node with drain=False"
        await self.stop()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
        sent.update(headers or {})
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.endpoint + path, json=body, headers=sent) as response,
        ):
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def lifecycle_events(self, until_kind: str, count: int = 1) -> list[dict[str, Any]]:
        """Lifecycle events this node published, reading on until ``count`` of ``until_kind``."""
        assert self.lifecycle is not None
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(DEADLINE):
            while [e["kind"] for e in seen].count(until_kind) < count:
                message = await anext(self.lifecycle)
                kind = message.attributes["type"].rsplit(".", 1)[1]
                seen.append({"kind": kind, **json.loads(message.data)})
        return seen

    def audit(self, action: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.audit_lines]
        return [r for r in records if r["action"] == action]

    async def metric(self, name: str, **labels: str) -> float:
        status, text = await self.call("GET", "/metrics", auth=False)
        assert status == 200
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in str(text).splitlines():
            series, _, value = line.rpartition(" ")
            if series != name and not series.startswith(name + "{"):
                continue
            if all(label in series for label in wanted):
                total += float(value)
        return total


@dataclass
class ClusterEnv:
    redis_url: str
    prefix: str
    nodes: list[Node] = field(default_factory=list)

    def settings(self, name: str, port: int, **extra: str) -> Settings:
        environ = {
            **FAST,
            "HOSTNAME": name,
            "HttpPort": str(port),
            "GrpcPort": str(port + 1 if port < 65535 else port - 1),
            **extra,
        }
        return Settings.load(environ=environ)

    async def add(self, name: str, *, drain: bool = False, port: int | None = None,
                  **extra: str) -> Node:  # fmt: skip
        settings = self.settings(name, port or free_port(), **extra)
        store = RedisStateStore(self.redis_url, key_prefix=self.prefix)
        node = Node(name, settings, store, drain)
        self.nodes.append(node)
        return await node.start()

    async def start(self, *names: str, drain: bool = False, **extra: str) -> list[Node]:
        return [await self.add(name, drain=drain, **extra) for name in names]

    def view(self) -> RedisStateStore:
        return RedisStateStore(self.redis_url, key_prefix=self.prefix)

    async def record(self, connection_id: str) -> ConnectionRecord | None:
        store = self.view()
        try:
            raw = await store.get(keys.connection_key(connection_id))
        finally:
            await store.close()
        return None if raw is None else ConnectionRecord.from_json(raw.value)

    async def heartbeat(self, instance_id: str) -> Heartbeat | None:
        store = self.view()
        try:
            raw = await store.get(keys.heartbeat_key(instance_id))
        finally:
            await store.close()
        return None if raw is None else Heartbeat.from_json(raw.value)

    async def wait_reclaimable(self, ids: list[str], settings: Settings) -> None:
        """Until R6 allows taking every record in ``ids`` (owner stale, records unrenewed)."""
        policy = settings.liveness_policy()

        async def ready() -> bool:
            import time

            for connection_id in ids:
                record = await self.record(connection_id)
                assert record is not None and record.owner is not None
                beat = await self.heartbeat(record.owner.instance_id)
                if not is_reclaimable(record, beat, time.time(), policy):
                    return False
            return True

        await until(ready, f"{ids} to become reclaimable (R6)")

    async def wait_owned(
        self, ids: list[str], owners: set[str], *, token: int | None = None, connected: bool = True
    ) -> dict[str, ConnectionRecord]:
        """Until every record is owned by one of ``owners`` (at ``token``) and CONNECTED."""

        async def done() -> dict[str, ConnectionRecord] | None:
            found = {}
            for connection_id in ids:
                record = await self.record(connection_id)
                if record is None or record.owner is None:
                    return None
                if record.owner.instance_id not in owners:
                    return None
                if token is not None and record.fencing_token != token:
                    return None
                if connected and record.status is not ConnectionStatus.CONNECTED:
                    return None
                found[connection_id] = record
            return found

        result: dict[str, ConnectionRecord] = await until(done, f"{ids} owned by {owners}")
        return result


@asynccontextmanager
async def cluster_env(redis_url: str) -> AsyncIterator[ClusterEnv]:
    env = ClusterEnv(redis_url, f"wsm-test-{uuid.uuid4().hex}:")
    try:
        yield env
    finally:
        for node in reversed(env.nodes):
            await node.stop()
            if node.lifecycle is not None:
                await node.lifecycle.aclose()
            await node.publisher.close()
        view = env.view()
        try:
            await view.drop_namespace()
        finally:
            await view.close()
        for node in env.nodes:
            await node.store.close()
