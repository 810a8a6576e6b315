"""The state stores the spec runs on, and two wrappers that make failures and races happen.

A :class:`SpecBackend` is one running backend (an in-memory dict, a SQLite file, a Redis
server, the Dapr sidecar stand-in on Redis). Every simulated process opens its own store object
on it (its own connection, as a real pod would), all in one key prefix per example, which is
dropped when the example ends.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support.dapr_sidecar import DaprSidecar, SidecarStateStore, fast_resilience
from wsmanager.adapters.memory import MemoryStateStore
from wsmanager.adapters.redis import RedisStateStore
from wsmanager.adapters.sqlite import SqliteStateStore
from wsmanager.core.errors import StoreUnavailable
from wsmanager.ports import Etag, Expect, Operation, StateStore, Versioned

__all__ = ["STORE_NAMES", "FailingStore", "OpenOnUseStore", "SpecBackend", "YieldingStore"]

STORE_NAMES = ("memory", "sqlite", "redis", "dapr")


class YieldingStore:
    """Delegates to ``inner`` but lets the event loop switch tasks before every operation.

    The memory store never awaits anything, so without this two sweeps "running at once" under
    ``asyncio.gather`` would simply run one after the other. Real stores yield on every I/O.
    """

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        #: When set, each operation first yields 0-3 times, as this generator says: a
        #: schedule drawn by the test, so that races are explored yet replayable.
        self.schedule: random.Random | None = None

    def __repr__(self) -> str:
        return f"YieldingStore({self.inner!r})"

    async def _yield(self) -> None:
        for _ in range(1 if self.schedule is None else self.schedule.randint(0, 3)):
            await asyncio.sleep(0)

    async def get(self, key: str) -> Versioned | None:
        await self._yield()
        return await self.inner.get(key)

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        await self._yield()
        return await self.inner.bulk_get(keys)

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag:
        await self._yield()
        return await self.inner.save(key, value, expect=expect, ttl_seconds=ttl_seconds)

    async def delete(self, key: str, *, expect: Etag | None = None) -> None:
        await self._yield()
        await self.inner.delete(key, expect=expect)

    async def transact(self, operations: Sequence[Operation]) -> None:
        await self._yield()
        await self.inner.transact(operations)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class FailingStore:
    """R5: a store that answers ``fail_after`` operations and then fails every one of them
    with :class:`StoreUnavailable`, as a state store going down in the middle of a sweep."""

    def __init__(self, inner: StateStore, fail_after: int) -> None:
        self.inner = inner
        self.remaining = fail_after

    def _spend(self) -> None:
        if self.remaining <= 0:
            raise StoreUnavailable("injected: the state store stopped answering")
        self.remaining -= 1

    async def get(self, key: str) -> Versioned | None:
        self._spend()
        return await self.inner.get(key)

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        self._spend()
        return await self.inner.bulk_get(keys)

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag:
        self._spend()
        return await self.inner.save(key, value, expect=expect, ttl_seconds=ttl_seconds)

    async def delete(self, key: str, *, expect: Etag | None = None) -> None:
        self._spend()
        await self.inner.delete(key, expect=expect)

    async def transact(self, operations: Sequence[Operation]) -> None:
        self._spend()
        await self.inner.transact(operations)

    async def ping(self) -> None:
        self._spend()
        await self.inner.ping()

    async def close(self) -> None:
        return None  # the inner store belongs to the process


class OpenOnUseStore:
    """Delegates to a Dapr store, opening it at its first operation.

    The machine builds store objects outside its event loop (``backend.make`` is synchronous),
    but the SDK's aio client binds to the loop it is made on, and every example runs on a loop
    of its own: so the client is made on first use, on the example's loop.
    """

    def __init__(self, inner: SidecarStateStore) -> None:
        self.inner = inner
        self._opened = False

    def __repr__(self) -> str:
        return f"OpenOnUseStore({self.inner!r})"

    async def _store(self) -> SidecarStateStore:
        if not self._opened:
            await self.inner.open()
            self._opened = True
        return self.inner

    async def get(self, key: str) -> Versioned | None:
        return await (await self._store()).get(key)

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        return await (await self._store()).bulk_get(keys)

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag:
        store = await self._store()
        return await store.save(key, value, expect=expect, ttl_seconds=ttl_seconds)

    async def delete(self, key: str, *, expect: Etag | None = None) -> None:
        await (await self._store()).delete(key, expect=expect)

    async def transact(self, operations: Sequence[Operation]) -> None:
        await (await self._store()).transact(operations)

    async def ping(self) -> None:
        await (await self._store()).ping()

    async def close(self) -> None:
        await self.inner.close()  # never opened: nothing to close

    def drop_namespace(self) -> None:
        self.inner.drop_namespace()  # through the stand-in's Redis: needs no client


class SpecBackend:
    """One backend: ``make(prefix)`` opens a store object; ``drop(prefix)`` empties a prefix."""

    def __init__(self, name: str, make: Callable[[str], StateStore]) -> None:
        self.name = name
        self.make = make

    def __repr__(self) -> str:
        return f"SpecBackend({self.name!r})"

    async def drop(self, prefix: str) -> None:
        store = self.make(prefix)
        inner = store.inner if isinstance(store, YieldingStore) else store
        try:
            result = inner.drop_namespace()  # type: ignore[attr-defined]  # test-only helper
            if asyncio.iscoroutine(result):
                await result
        finally:
            await store.close()

    @classmethod
    def memory(cls) -> SpecBackend:
        root = MemoryStateStore()  # one dict shared by every process's store object

        def make(prefix: str) -> StateStore:
            return YieldingStore(MemoryStateStore(key_prefix=prefix, shared_with=root))

        return cls("memory", make)

    @classmethod
    def sqlite(cls, path: Path) -> SpecBackend:
        return cls("sqlite", lambda prefix: SqliteStateStore(path, key_prefix=prefix))

    @classmethod
    def redis(cls, url: str) -> SpecBackend:
        return cls("redis", lambda prefix: RedisStateStore(url, key_prefix=prefix))

    @classmethod
    def dapr(cls, sidecar: DaprSidecar) -> SpecBackend:
        """Through the real SDK (``dapr.aio``) to the sidecar stand-in, which keeps state in
        Redis as daprd's ``state.redis`` does; each store object has its own client, as each
        pod has its own sidecar connection."""
        sidecar.point_sdk_here()

        def make(prefix: str) -> StateStore:
            store = SidecarStateStore(
                sidecar,
                key_prefix=prefix,
                address=sidecar.grpc_address,
                # Breaker and retries as in production, with test-sized waits: an outage
                # (FailingStore) is injected above the adapter, the sidecar itself stays up.
                resilience=fast_resilience(),
            )
            return OpenOnUseStore(store)

        return cls("dapr", make)
