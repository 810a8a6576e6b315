"""Ports: the small interfaces the shell depends on, with the semantics every adapter honours.

The state-store port follows Dapr's state API semantics, so a Dapr sidecar, Redis, SQLite and
memory are interchangeable (one conformance suite in ``tests/integration`` runs against all):

* ``get`` returns the value and an opaque ETag, or ``None``.
* ``save`` with ``expect=None`` is last-write-wins; with an :data:`Etag` it succeeds only if the
  stored ETag is that one; with :data:`ABSENT` it succeeds only if the key does not exist
  (Dapr's first-write-wins). A mismatch raises :class:`ConcurrencyConflict` and changes nothing.
* ``delete`` without ``expect`` is idempotent; with an ETag it conflicts on mismatch or absence.
* ``transact`` checks every ETag first and then applies every operation, or raises and applies
  none (all-or-nothing).
* ``ttl_seconds`` makes a key expire (garbage collection only, R12).
* Any failure of the backend itself raises :class:`StoreUnavailable` (retryable). On a write,
  that means the outcome is unknown: the write may have been applied. Callers re-read before
  retrying a CAS (a retried write may otherwise conflict with itself).

ETags are opaque strings: adapters may hand out numbers or random strings. An ETag is never
reused for a key: a value deleted and re-created gets an ETag its predecessor never had, so a
stale CAS cannot succeed against a new incarnation of the key — except through Dapr, whose
Redis store restarts a re-created key's version at 1 (so callers never CAS a re-created key
with an ETag read before its deletion). ETags of different keys may be equal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NewType, Protocol, runtime_checkable

__all__ = [
    "ABSENT",
    "Absent",
    "Clock",
    "Delete",
    "Etag",
    "Expect",
    "Message",
    "Operation",
    "Publisher",
    "SecretStore",
    "StateStore",
    "Subscribable",
    "Upsert",
    "Versioned",
]

Etag = NewType("Etag", str)


class Absent:
    """Marker for "the key must not exist" (first write)."""

    _instance: Absent | None = None

    def __new__(cls) -> Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = Absent()

Expect = Etag | Absent | None


@dataclass(frozen=True, slots=True)
class Versioned:
    value: bytes
    etag: Etag


@dataclass(frozen=True, slots=True)
class Upsert:
    key: str
    value: bytes
    expect: Expect = None
    ttl_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    expect: Etag | None = None


Operation = Upsert | Delete


@runtime_checkable
class StateStore(Protocol):
    """Key-value state with ETag optimistic concurrency (Dapr semantics, see module doc)."""

    async def get(self, key: str) -> Versioned | None: ...

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        """Values of the keys that exist; missing keys are simply absent from the result."""
        ...

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag: ...

    async def delete(self, key: str, *, expect: Etag | None = None) -> None: ...

    async def transact(self, operations: Sequence[Operation]) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """One event to publish: the CloudEvent's data plus its attributes (R9, brief §5)."""

    topic: str
    data: bytes
    content_type: str = "application/json"
    #: CloudEvent ``type``, ``source``, ``id`` and extension attributes (lower-case names).
    attributes: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Publisher(Protocol):
    """Publishes events to topics. ``publish_many`` keeps order within a topic."""

    async def publish(self, message: Message) -> None: ...

    async def publish_many(self, messages: Sequence[Message]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Subscribable(Protocol):
    """A publisher that can also be watched (the in-process one, for ``wsm tail``)."""

    def subscribe(self, topic: str) -> AsyncIterator[Message]: ...


@runtime_checkable
class SecretStore(Protocol):
    async def get_secret(self, name: str) -> str | None: ...


@runtime_checkable
class Clock(Protocol):
    """Wall-clock seconds since the epoch. Tests pass a controllable one."""

    def now(self) -> float: ...
