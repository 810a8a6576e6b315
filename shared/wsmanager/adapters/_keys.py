"""What every state-store adapter shares: argument checks and key namespacing."""

from __future__ import annotations

from collections.abc import Sequence

from wsmanager.core.errors import InvalidArgument
from wsmanager.ports import Delete, Operation, Upsert

__all__ = ["check_key", "check_operations", "check_prefix", "check_ttl"]

MAX_KEY_LENGTH = 1024


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise InvalidArgument("key prefix must be a string")
    return prefix


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"state key must be a non-empty string of at most {MAX_KEY_LENGTH}")
    try:
        key.encode()
    except UnicodeEncodeError:  # lone surrogates: no backend can store them
        raise InvalidArgument("state key must be valid Unicode") from None
    return key


def check_ttl(ttl_seconds: float | None) -> float | None:
    if ttl_seconds is not None and not ttl_seconds > 0:
        raise InvalidArgument("ttl_seconds must be > 0")
    return ttl_seconds


def check_operations(operations: Sequence[Operation]) -> None:
    """A transaction names each key once; two operations on one key would be ambiguous."""
    seen: set[str] = set()
    for op in operations:
        if not isinstance(op, Upsert | Delete):
            raise InvalidArgument(f"unknown transaction operation {op!r}")
        check_key(op.key)
        if isinstance(op, Upsert):
            if not isinstance(op.value, bytes):
                raise InvalidArgument("state values are bytes")
            check_ttl(op.ttl_seconds)
        if op.key in seen:
            raise InvalidArgument(f"key {op.key!r} appears twice in one transaction")
        seen.add(op.key)
