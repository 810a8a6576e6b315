"""SQLite state store: the embedded default, one file shared by several local processes.

Semantics are the port's (see :mod:`wsmanager.ports`), identical to the memory adapter. How:

* One table ``wsm_state(key TEXT PRIMARY KEY, value BLOB, etag TEXT, expires_at REAL)``; the
  stored key is ``key_prefix + key``, so several namespaces share a file.
* Every write (save, delete, transaction) is one ``BEGIN IMMEDIATE`` transaction that reads the
  current ETags and then writes: the file's write lock is held from the check to the commit, so
  compare-and-swap is atomic across threads *and* OS processes. WAL mode lets readers run while
  a writer commits; ``busy_timeout`` makes a writer wait for the lock instead of failing.
* ETags are random strings (as in memory): an ETag read before a delete never matches a key
  re-created later.
* TTL is wall-clock ``expires_at`` (seconds since the epoch, so every process agrees). Expired
  rows count as absent everywhere; they are deleted lazily (when read, written, or by a small
  sweep every few hundred writes).
* Any SQLite failure, including "database is locked" after ``busy_timeout``, raises
  :class:`StoreUnavailable`; so do calls after :meth:`close`.

Blocking SQLite calls run on one worker thread per store, so operations of one store object are
serialised (one connection never interleaves two transactions) and the event loop never blocks.
Construction does no I/O: the file is opened by the first operation. Use ``await
SqliteStateStore.open(path)`` to open it at once and surface a bad path or lock at start-up.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from wsmanager.adapters._keys import check_key, check_operations, check_prefix, check_ttl
from wsmanager.core.errors import ConcurrencyConflict, InvalidArgument, StoreUnavailable
from wsmanager.ports import Absent, Delete, Etag, Expect, Operation, Upsert, Versioned

__all__ = ["SqliteStateStore"]

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS wsm_state ("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL, etag TEXT NOT NULL, expires_at REAL)",
    # Partial index: the sweep finds expired rows without scanning rows that never expire.
    "CREATE INDEX IF NOT EXISTS wsm_state_expiry ON wsm_state(expires_at)"
    " WHERE expires_at IS NOT NULL",
)
_SWEEP_EVERY = 256  # writes between two sweeps of expired rows
_IN_CHUNK = 500  # keys per "IN (...)" query, well under SQLite's bound-parameter limit


class SqliteStateStore:
    """The :class:`~wsmanager.ports.StateStore` port on a SQLite file (see the module doc).

    ``busy_timeout`` (seconds) bounds how long a write waits for another process's lock before
    giving up with :class:`StoreUnavailable`. ``wall_clock`` is injectable for tests.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key_prefix: str = "",
        busy_timeout: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = os.fspath(path)
        self._prefix = check_prefix(key_prefix)
        self._busy_timeout = busy_timeout
        self._clock = wall_clock
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._writes = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsm-sqlite")

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, key_prefix: str = "", busy_timeout: float = 5.0
    ) -> SqliteStateStore:
        """Construct and open the file now (creating it, its directory and the table)."""
        store = cls(path, key_prefix=key_prefix, busy_timeout=busy_timeout)
        try:
            await store.ping()
        except BaseException:
            await store.close()
            raise
        return store

    def __repr__(self) -> str:
        return f"SqliteStateStore(path={self._path!r}, key_prefix={self._prefix!r})"

    # -- plumbing: everything below runs on the worker thread ----------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("sqlite state store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(
                f"sqlite state store failed: {type(exc).__name__}: {exc}"
            ) from exc
        except RuntimeError as exc:  # executor shut down by a concurrent close()
            raise StoreUnavailable("sqlite state store is closed") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = self._path.startswith("file:")  # SQLite URI filenames pass through as is
            if self._path != ":memory:" and not uri:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions, we issue BEGIN IMMEDIATE ourselves.
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL is still crash-consistent; it skips an fsync per commit.
                conn.execute("PRAGMA synchronous = NORMAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection, float], T]) -> T:
        """Run ``fn`` in one BEGIN IMMEDIATE transaction: commit if it returns, else roll back."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = self._clock()  # read under the lock, so expiry decisions are serialised too
            result = fn(conn, now)
            self._writes += 1
            if self._writes % _SWEEP_EVERY == 0:
                conn.execute("DELETE FROM wsm_state WHERE expires_at <= ?", (now,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _full_key(self, key: str) -> str:
        check_key(key)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # SQLite TEXT is UTF-8; a lone surrogate has no UTF-8 form.
            raise InvalidArgument("state key must be encodable as UTF-8") from None
        return self._prefix + key

    @staticmethod
    def _current(conn: sqlite3.Connection, full: str, now: float) -> tuple[bytes, str] | None:
        row = conn.execute(
            "SELECT value, etag, expires_at FROM wsm_state WHERE key = ?", (full,)
        ).fetchone()
        if row is None or (row[2] is not None and row[2] <= now):
            return None
        return bytes(row[0]), str(row[1])

    def _check(self, conn: sqlite3.Connection, now: float, op: Operation) -> None:
        current = self._current(conn, self._prefix + op.key, now)
        expect: object = op.expect
        if isinstance(expect, Absent):
            if current is not None:
                raise ConcurrencyConflict(f"first write of {op.key!r}: key already exists")
        elif expect is not None and (current is None or current[1] != expect):
            raise ConcurrencyConflict(f"ETag mismatch on {op.key!r}")

    def _apply(self, conn: sqlite3.Connection, now: float, op: Operation) -> Etag:
        full = self._prefix + op.key
        if isinstance(op, Delete):
            conn.execute("DELETE FROM wsm_state WHERE key = ?", (full,))
            return Etag("")
        etag = Etag(secrets.token_hex(8))
        expires = now + op.ttl_seconds if op.ttl_seconds is not None else None
        conn.execute(
            "INSERT OR REPLACE INTO wsm_state (key, value, etag, expires_at) VALUES (?, ?, ?, ?)",
            (full, op.value, etag, expires),
        )
        return etag

    def _transact_sync(self, operations: Sequence[Operation]) -> list[Etag]:
        def run(conn: sqlite3.Connection, now: float) -> list[Etag]:
            for op in operations:  # every check first: a conflict rolls back, nothing applied
                self._check(conn, now, op)
            return [self._apply(conn, now, op) for op in operations]

        return self._write(run)

    def _read_sync(self, fulls: list[str]) -> dict[str, tuple[bytes, str]]:
        conn = self._connection()
        now = self._clock()
        rows: list[tuple[str, bytes, str, float | None]] = []
        conn.execute("BEGIN")  # one snapshot across the chunks
        try:
            for start in range(0, len(fulls), _IN_CHUNK):
                chunk = fulls[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(
                    f"SELECT key, value, etag, expires_at FROM wsm_state WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
        finally:
            conn.execute("COMMIT")
        found = {k: (bytes(v), str(e)) for k, v, e, exp in rows if exp is None or exp > now}
        expired = [(k, now) for k, _, _, exp in rows if exp is not None and exp <= now]
        if expired:
            self._delete_expired(conn, expired)
        return found

    def _delete_expired(self, conn: sqlite3.Connection, expired: list[tuple[str, float]]) -> None:
        """Lazy clean-up after a read, only if the write lock is free right now: a read must
        not wait for (or fail because of) another process's writer. Conditional on the expiry,
        so a row renewed meanwhile stays."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.executemany("DELETE FROM wsm_state WHERE key = ? AND expires_at <= ?", expired)
        except sqlite3.OperationalError:
            pass  # locked: writes and the sweep delete it later; the read already succeeded
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _drop_sync(self) -> None:
        def run(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "DELETE FROM wsm_state WHERE substr(key, 1, ?) = ?",
                (len(self._prefix), self._prefix),
            )

        self._write(run)

    # -- the port ------------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        full = self._full_key(key)
        found = (await self._call(self._read_sync, [full])).get(full)
        return None if found is None else Versioned(found[0], Etag(found[1]))

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        fulls = {self._full_key(key): key for key in keys}
        if not fulls:
            return {}
        found = await self._call(self._read_sync, list(fulls))
        return {fulls[full]: Versioned(value, Etag(etag)) for full, (value, etag) in found.items()}

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag:
        if not isinstance(value, bytes):
            raise InvalidArgument("state values are bytes")
        check_ttl(ttl_seconds)
        self._full_key(key)
        (etag,) = await self._call(self._transact_sync, [Upsert(key, value, expect, ttl_seconds)])
        return etag

    async def delete(self, key: str, *, expect: Etag | None = None) -> None:
        self._full_key(key)
        await self._call(self._transact_sync, [Delete(key, expect)])

    async def transact(self, operations: Sequence[Operation]) -> None:
        check_operations(operations)
        for op in operations:
            self._full_key(op.key)
        if operations:
            await self._call(self._transact_sync, list(operations))

    async def ping(self) -> None:
        """Open the file if needed and run a trivial query."""

        def probe() -> None:
            self._connection().execute("SELECT 1").fetchone()

        await self._call(probe)

    async def close(self) -> None:
        """Close the connection and stop the worker thread. Later calls raise StoreUnavailable."""
        if self._closed:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def drop_namespace(self) -> None:
        """Delete every key under this store's prefix (test cleanup)."""
        await self._call(self._drop_sync)
