"""Index values kept beside the connection records, and CAS helpers to change them.

Three kinds of index live in the state store (brief §5):

* the global index ``websocketmanager.connection.index``: a JSON list of every connection id;
* a per-owner index ``websocketmanager.instance.index.<instance_id>``: a JSON object mapping each
  connection id owned by that instance id to the owning *incarnation*, so a sweeper can find the
  orphans of a predecessor incarnation (R1) without reading the records themselves;
* the instance index ``websocketmanager/instances/_index``: a JSON list of instance ids that hold
  records or heartbeats (what a sweep starts from).

The records are the truth; indexes are maintained in the same transaction as the record change
(so they agree), and a sweep prunes entries whose record has expired (R12).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from wsmanager.core.errors import InvalidArgument
from wsmanager.ports import ABSENT, Etag, Expect, StateStore, Upsert, Versioned

__all__ = [
    "IdList",
    "OwnerIndex",
    "Snapshot",
    "encode_id_list",
    "encode_owner_index",
    "parse_id_list",
    "parse_owner_index",
    "read_id_list",
    "read_owner_index",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """An index value as read, with the ETag to write it back by CAS (ABSENT if it was missing)."""

    key: str
    value: T
    expect: Expect

    def upsert(self, value: T, encode: Callable[[T], bytes]) -> Upsert:
        return Upsert(self.key, encode(value), expect=self.expect)


IdList = list[str]
OwnerIndex = dict[str, str]


def _decode(raw: Versioned | None, kind: type, key: str) -> tuple[object, Expect]:
    if raw is None:
        return kind(), ABSENT
    try:
        value = json.loads(raw.value)
    except ValueError as exc:
        raise InvalidArgument(f"index {key!r} is not valid JSON") from exc
    if not isinstance(value, kind):
        raise InvalidArgument(f"index {key!r} has the wrong shape")
    return value, Etag(raw.etag)


def encode_id_list(ids: IdList) -> bytes:
    return json.dumps(sorted(set(ids)), separators=(",", ":")).encode()


def encode_owner_index(index: OwnerIndex) -> bytes:
    return json.dumps(dict(sorted(index.items())), separators=(",", ":")).encode()


def parse_id_list(raw: Versioned | None, key: str) -> Snapshot[IdList]:
    value, expect = _decode(raw, list, key)
    assert isinstance(value, list)
    return Snapshot(key, [str(v) for v in value], expect)


def parse_owner_index(raw: Versioned | None, key: str) -> Snapshot[OwnerIndex]:
    value, expect = _decode(raw, dict, key)
    assert isinstance(value, dict)
    return Snapshot(key, {str(k): str(v) for k, v in value.items()}, expect)


async def read_id_list(store: StateStore, key: str) -> Snapshot[IdList]:
    return parse_id_list(await store.get(key), key)


async def read_owner_index(store: StateStore, key: str) -> Snapshot[OwnerIndex]:
    return parse_owner_index(await store.get(key), key)
