"""State-store backends for the integration suites: one conformance suite runs against each.

:data:`BACKENDS` maps a backend name to a factory ``(request) -> Backend``. A :class:`Backend`
is one running store (a memory dict, a SQLite file, a Redis) on which any number of store
objects can be opened, each in its own key namespace (or a shared one, to model two processes).
Factories ask for what they need lazily (``request.getfixturevalue``), so a memory-only run
starts no Redis. To add a backend (e.g. ``"dapr"``), add one factory here: every test using the
``store`` or ``backend`` fixture then runs against it.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.dapr_sidecar import DaprSidecar, SidecarStateStore, fast_resilience
from wsmanager.adapters.memory import MemoryStateStore
from wsmanager.adapters.redis import RedisStateStore
from wsmanager.adapters.sqlite import SqliteStateStore
from wsmanager.ports import StateStore

__all__ = ["BACKENDS", "Backend", "new_prefix"]


def new_prefix() -> str:
    """A fresh namespace, so tests never see each other's keys on a shared backend."""
    return f"wsm-test-{uuid.uuid4().hex}:"


class Backend:
    """One backend; :meth:`open` makes store objects on it and remembers them for clean-up."""

    def __init__(
        self, name: str, make: Callable[[str], StateStore], *, needs_open: bool = False
    ) -> None:
        self.name = name
        #: Build a store object for a key prefix (no I/O, untracked: the caller cleans up).
        self.make = make
        #: The adapter must be opened (``await store.open()``) before use (Dapr's client).
        self.needs_open = needs_open
        self._opened: list[StateStore] = []

    async def open(self, prefix: str | None = None) -> StateStore:
        """A store object in ``prefix`` (default: a fresh one); dropped and closed at teardown."""
        store = self.make(prefix if prefix is not None else new_prefix())
        if self.needs_open:
            await store.open()  # type: ignore[attr-defined]  # not part of the port
        self._opened.append(store)
        return store

    async def aclose(self) -> None:
        """Drop every namespace opened here and close every store object."""
        for store in self._opened:
            try:
                await drop_namespace(store)
            finally:
                await store.close()
        self._opened.clear()

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


async def drop_namespace(store: StateStore) -> None:
    """Test clean-up, whichever way the adapter offers it (memory's is synchronous)."""
    result = store.drop_namespace()  # type: ignore[attr-defined]  # not part of the port
    if inspect.isawaitable(result):
        await result


def _memory(request: pytest.FixtureRequest) -> Backend:
    root = MemoryStateStore()  # the shared dict: every store object made here sees the same data
    return Backend("memory", lambda prefix: MemoryStateStore(key_prefix=prefix, shared_with=root))


def _sqlite(request: pytest.FixtureRequest) -> Backend:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    path = tmp_path / "state.db"
    return Backend("sqlite", lambda prefix: SqliteStateStore(path, key_prefix=prefix))


def _redis(request: pytest.FixtureRequest) -> Backend:
    url: str = request.getfixturevalue("redis_url")
    return Backend("redis", lambda prefix: RedisStateStore(url, key_prefix=prefix))


@pytest.fixture(scope="session")
def dapr_sidecar(redis_url: str) -> Iterator[DaprSidecar]:
    """The Dapr sidecar stand-in (real SDK protos, real Redis), shared by the session."""
    with DaprSidecar(redis_url) as sidecar:
        yield sidecar


def _dapr(request: pytest.FixtureRequest) -> Backend:
    # The real dapr.aio client, through the sidecar stand-in (brief §6: no daprd here).
    sidecar: DaprSidecar = request.getfixturevalue("dapr_sidecar")
    sidecar.point_sdk_here()

    def make(prefix: str) -> StateStore:
        return SidecarStateStore(
            sidecar,
            key_prefix=prefix.replace(":", "-"),
            address=sidecar.grpc_address,
            resilience=fast_resilience(),
        )

    return Backend("dapr", make, needs_open=True)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "dapr": _dapr,
}
#: Backends the differential test drives side by side (their stores need no opening).
DIFFERENTIAL = ("memory", "sqlite", "redis")


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each backend in turn; stores opened on it are dropped and closed afterwards."""
    opened = BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def store(backend: Backend) -> StateStore:
    """A store object in a fresh namespace of each backend in turn."""
    return await backend.open()


@pytest.fixture
def all_backends(request: pytest.FixtureRequest) -> dict[str, Backend]:
    """Every backend at once, for differential tests (stores from ``make`` are the caller's)."""
    return {name: BACKENDS[name](request) for name in DIFFERENTIAL}
