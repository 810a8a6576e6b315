"""A Dapr sidecar stand-in for tests: the runtime's gRPC API on real Redis, in its own thread.

``daprd`` cannot be installed here, so :class:`DaprSidecar` serves the part of the Dapr runtime
API that the adapters use (the SDK's own generated ``DaprServicer``, in
:mod:`tests.support.dapr_runtime`), with the semantics of ``daprd`` + components-contrib
``state.redis``, checked against their sources:

* state lives in a Redis HASH ``<app-id>||<key>`` with fields ``data`` and ``version``; the
  ETag is the version, a counter from 1; a non-numeric ETag on save is INVALID_ARGUMENT;
* a save or delete whose ETag does not match answers ABORTED; an ETag for a missing key is
  accepted; first-write without an ETag overwrites unless the key was itself written with
  first-write (which leaves a sticky ``first-write`` field); ``ttlInSeconds`` > 0 EXPIREs,
  <= 0 PERSISTs, absent leaves the TTL alone;
* a failed transaction answers INTERNAL ("error while executing state transaction: failed to
  set key ..."), as daprd does. Unlike Redis MULTI/EXEC it is all-or-nothing (one Lua script):
  the stand-in keeps what Dapr documents, the adapter must not rely on more (see dapr_state);
* publish appends the CloudEvent Dapr would build to the Redis stream named after the topic
  (fields ``data`` and, for tests, ``metadata``); :meth:`DaprSidecar.fail_bulk_entries` makes
  bulk publish report per-entry failures, topics in ``fail_topics`` fail whole;
* secrets come from a dict; GET ``/v1.0/healthz[/outbound]`` answers 204 on the HTTP port.

It runs on its own event loop in a thread: ``DaprClient()`` blocks its caller's thread until
the health check answers, so a stand-in on the caller's loop would deadlock.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import grpc
import redis.asyncio as aioredis
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from tests.support.dapr_runtime import make_servicer
from wsmanager.adapters.dapr_state import DaprStateStore
from wsmanager.adapters.resilience import CircuitBreaker, Resilience

__all__ = [
    "Counting",
    "DaprSidecar",
    "SidecarStateStore",
    "fast_resilience",
    "make_dapr_store",
    "new_dapr_prefix",
]

T = TypeVar("T")


class DaprSidecar:
    """The stand-in: ``start()``/``stop()`` (repeatable, same ports), or a context manager."""

    def __init__(
        self,
        redis_url: str,
        *,
        app_id: str = "wsm-test",
        secrets: Mapping[str, str] | None = None,
        state_stores: tuple[str, ...] = ("statestore",),
        pubsubs: tuple[str, ...] = ("pubsub",),
        secret_stores: tuple[str, ...] = ("secretstore",),
    ) -> None:
        self.redis_url, self.app_id = redis_url, app_id
        self.secrets = dict(secrets or {})
        self.state_stores, self.pubsubs, self.secret_stores = state_stores, pubsubs, secret_stores
        self.fail_topics: set[str] = set()
        self._bulk_failures: dict[str, list[int]] = {}
        self.grpc_port = 0
        self.http_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._http: asyncio.Server | None = None
        self._db: aioredis.Redis | None = None
        self._pointed = False

    def __repr__(self) -> str:
        return f"DaprSidecar({self.grpc_address}, {self.http_endpoint}, running={self.running})"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> DaprSidecar:
        if self._thread is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="dapr-sidecar", daemon=True
            )
            self._thread.start()
            self._run(self._serve())
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._pointed:
            from dapr.conf import settings

            for name in ("DAPR_HTTP_ENDPOINT", "DAPR_GRPC_ENDPOINT"):
                vars(settings).pop(name, None)  # back to environment / defaults
            self._pointed = False
        try:
            self._run(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._thread = self._loop = None

    def __enter__(self) -> DaprSidecar:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def point_sdk_here(self) -> None:
        """Aim the SDK's global settings (read when used, in dapr 1.19) at this stand-in;
        ``stop()`` undoes it. The health check that ``DaprClient()`` waits for reads them."""
        from dapr.conf import settings

        settings.DAPR_HTTP_ENDPOINT = self.http_endpoint
        settings.DAPR_GRPC_ENDPOINT = self.grpc_address
        self._pointed = True

    def redis_state(self, key: str) -> tuple[dict[bytes, bytes], int]:
        """The raw HASH behind state ``key`` (prefix included) and its TTL (-1 none, -2 gone)."""
        raw = f"{self.app_id}||{key}"
        return self._run(self._redis().hgetall(raw)), self._run(self._redis().ttl(raw))

    def fail_bulk_entries(self, topic: str, entries: int, calls: int = 1) -> None:
        """In the next ``calls`` bulk publishes to ``topic``, the first ``entries`` entries fail."""
        self._bulk_failures[topic] = [entries, calls]

    def published(self, topic: str) -> list[dict[str, Any]]:
        """Every event appended to ``topic``'s stream: ``{"event": {...}, "metadata": {...}}``."""
        rows = self._run(self._redis().xrange(topic))
        return [
            {"event": json.loads(f[b"data"]), "metadata": json.loads(f[b"metadata"])}
            for _, f in rows
        ]

    def drop_prefix(self, key_prefix: str) -> int:
        """Delete every state key under ``key_prefix`` (test cleanup); returns how many."""
        return self._run(self._drop(key_prefix))

    def _run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the sidecar's loop and wait for it from this thread."""
        assert self._loop is not None, "sidecar is not running"

        async def run() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def _redis(self) -> aioredis.Redis:
        assert self._db is not None, "sidecar is not running"
        return self._db

    async def _drop(self, key_prefix: str) -> int:
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in key_prefix)
        keys = [k async for k in self._redis().scan_iter(match=f"{self.app_id}||{escaped}*")]
        return int(await self._redis().delete(*keys)) if keys else 0

    async def _serve(self) -> None:
        self._db = aioredis.Redis.from_url(self.redis_url)
        self._server = grpc.aio.server()
        dapr_pb2_grpc.add_DaprServicer_to_server(make_servicer(self, self._db), self._server)
        self.grpc_port = self._server.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        await self._server.start()
        self._http = await asyncio.start_server(self._health, "127.0.0.1", self.http_port)
        self.http_port = self._http.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._http is not None:
            self._http.close()
            await self._http.wait_closed()
        if self._server is not None:
            await self._server.stop(grace=None)
        if self._db is not None:
            await self._db.aclose()
        self._http = self._server = self._db = None

    @staticmethod
    async def _health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).split()
            while (await reader.readline()).strip():
                pass  # skip the headers
            path = request_line[1].split(b"?")[0] if len(request_line) > 1 else b""
            ok = path in (b"/v1.0/healthz", b"/v1.0/healthz/outbound")
            status = b"204 No Content" if ok else b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        finally:
            writer.close()


class SidecarStateStore(DaprStateStore):
    """A DaprStateStore that can also drop its namespace, through the stand-in's Redis (Dapr's
    API cannot list keys). For shared suites that call ``drop_namespace()``."""

    def __init__(self, sidecar: DaprSidecar, **options: Any) -> None:
        super().__init__(**options)
        self.sidecar = sidecar

    def drop_namespace(self) -> None:
        self.sidecar.drop_prefix(self._prefix)


async def make_dapr_store(
    sidecar: DaprSidecar, key_prefix: str, *, resilience: Resilience | None = None, **options: Any
) -> SidecarStateStore:
    """An opened store on ``sidecar`` in ``key_prefix``; ``drop_namespace()`` (or
    ``sidecar.drop_prefix(key_prefix)``) removes its keys. Pass ``client=`` to share one client."""
    sidecar.point_sdk_here()
    store = SidecarStateStore(
        sidecar,
        key_prefix=key_prefix,
        address=sidecar.grpc_address,
        resilience=resilience,
        **options,
    )
    await store.open()
    return store


def new_dapr_prefix() -> str:
    """A fresh key namespace (no '||', which Dapr forbids in keys)."""
    return f"wsm-test-{uuid.uuid4().hex[:12]}:"


def fast_resilience(threshold: int = 3, reset: float = 0.3) -> Resilience:
    """Resilience with test-sized backoff, so failure tests take milliseconds."""
    breaker = CircuitBreaker(failure_threshold=threshold, reset_timeout=reset)
    return Resilience(attempts=3, initial_backoff=0.005, max_backoff=0.02, breaker=breaker)


class Counting:
    """Wraps an SDK client and counts calls per method (to see retries and batching)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted
