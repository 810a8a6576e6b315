"""In-memory state store: real ETag and first-write semantics, random-string ETags."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from wsmanager.adapters._keys import check_key, check_operations, check_prefix, check_ttl
from wsmanager.core.errors import ConcurrencyConflict, InvalidArgument
from wsmanager.ports import Absent, Delete, Etag, Expect, Operation, Upsert, Versioned

__all__ = ["MemoryStateStore"]


class MemoryStateStore:
    """A dict with Dapr's semantics. ETags are random strings, so nothing can depend on ints.

    Several instances may share one ``data`` dict (``shared_with``) to model several processes
    looking at one store, each with its own namespace.
    """

    def __init__(
        self,
        *,
        key_prefix: str = "",
        monotonic: Callable[[], float] = time.monotonic,
        shared_with: MemoryStateStore | None = None,
    ) -> None:
        self._prefix = check_prefix(key_prefix)
        self._monotonic = monotonic
        # key -> (value, etag, expires_at or None)
        self._data: dict[str, tuple[bytes, Etag, float | None]] = (
            shared_with._data if shared_with is not None else {}
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStateStore(key_prefix={self._prefix!r})"

    def _live(self, key: str) -> tuple[bytes, Etag, float | None] | None:
        entry = self._data.get(self._prefix + check_key(key))
        if entry is not None and entry[2] is not None and entry[2] <= self._monotonic():
            del self._data[self._prefix + key]
            return None
        return entry

    def _check(self, key: str, expect: Expect) -> None:
        entry = self._live(key)
        if isinstance(expect, Absent):
            if entry is not None:
                raise ConcurrencyConflict(f"first write of {key!r}: key already exists")
        elif expect is not None and (entry is None or entry[1] != expect):
            raise ConcurrencyConflict(f"ETag mismatch on {key!r}")

    def _put(self, key: str, value: bytes, ttl_seconds: float | None) -> Etag:
        etag = Etag(secrets.token_hex(8))
        expires = self._monotonic() + ttl_seconds if ttl_seconds else None
        self._data[self._prefix + key] = (value, etag, expires)
        return etag

    async def get(self, key: str) -> Versioned | None:
        entry = self._live(key)
        return None if entry is None else Versioned(entry[0], entry[1])

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        out = {}
        for key in keys:
            entry = self._live(key)
            if entry is not None:
                out[key] = Versioned(entry[0], entry[1])
        return out

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag:
        if not isinstance(value, bytes):
            raise InvalidArgument("state values are bytes")
        check_ttl(ttl_seconds)
        self._check(key, expect)
        return self._put(key, value, ttl_seconds)

    async def delete(self, key: str, *, expect: Etag | None = None) -> None:
        self._check(key, expect)
        self._data.pop(self._prefix + key, None)

    async def transact(self, operations: Sequence[Operation]) -> None:
        check_operations(operations)
        for op in operations:
            self._check(op.key, op.expect)
        for op in operations:
            if isinstance(op, Upsert):
                self._put(op.key, op.value, op.ttl_seconds)
            elif isinstance(op, Delete):
                self._data.pop(self._prefix + op.key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True

    def drop_namespace(self) -> None:
        """Remove every key under this store's prefix (test cleanup)."""
        for key in [k for k in self._data if k.startswith(self._prefix)]:
            del self._data[key]
