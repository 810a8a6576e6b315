"""The connection and instance model: frozen values, their JSON form, and status transitions.

Timestamps are float seconds since the Unix epoch, always passed in by the caller; nothing here
reads a clock. Records serialise to compact JSON (the state store's value) and parse strictly:
a record that does not parse raises :class:`InvalidArgument` rather than being half-trusted.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from wsmanager.core.errors import IllegalTransition, InvalidArgument

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ConnectionRecord",
    "ConnectionStatus",
    "Heartbeat",
    "Owner",
    "check_transition",
    "new_incarnation",
]


class ConnectionStatus(enum.StrEnum):
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    RECONNECTING = "RECONNECTING"
    DISCONNECTED = "DISCONNECTED"


S = ConnectionStatus

#: Legal status changes (reference §2.2), as data. A takeover (R7) re-enters CONNECTING from any
#: status, or DISCONNECTED when auto_reconnect is off; a self-transition is never a change.
ALLOWED_TRANSITIONS: Mapping[ConnectionStatus, frozenset[ConnectionStatus]] = MappingProxyType(
    {
        S.DISCONNECTED: frozenset({S.CONNECTING}),
        S.CONNECTING: frozenset({S.CONNECTED, S.RECONNECTING, S.DISCONNECTED}),
        S.CONNECTED: frozenset({S.RECONNECTING, S.DISCONNECTED, S.CONNECTING}),
        S.RECONNECTING: frozenset({S.CONNECTED, S.DISCONNECTED, S.CONNECTING}),
    }
)


def check_transition(current: ConnectionStatus, new: ConnectionStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> new`` is in the table."""
    if new not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"can't change status from {current} to {new}")


@dataclass(frozen=True, slots=True)
class Owner:
    """R1/R2: an owner is an instance id (the pod name) plus the incarnation of that process."""

    instance_id: str
    incarnation: str

    def __post_init__(self) -> None:
        if not self.instance_id or not self.incarnation:
            raise InvalidArgument("owner needs an instance_id and an incarnation")

    def __str__(self) -> str:
        return f"{self.instance_id}/{self.incarnation}"


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InvalidArgument(f"record field {key!r} is missing or has the wrong type")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(f"record field {key!r} must be a string or null")
    return value


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """The persisted state of one managed connection (state key ``...connection.<id>``).

    ``owner`` is ``None`` only after a graceful release (R11): the record then waits for a peer.
    ``fencing_token`` increases on every change of owner and never decreases (R2).
    ``renewed_at`` is the last time the owner confirmed the record (R6, R12).
    """

    id: str
    url: str
    status: ConnectionStatus
    owner: Owner | None
    fencing_token: int
    created_at: float
    updated_at: float
    renewed_at: float
    topic: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    auto_reconnect: bool = False
    content_type: str = "text/plain"

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidArgument("connection id must not be empty")
        if self.fencing_token < 0:
            raise InvalidArgument("fencing token must not be negative")
        # Freeze the tags so a record can never change behind a caller's back.
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    def with_changes(self, **changes: Any) -> ConnectionRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "status": self.status.value,
            "instance_id": self.owner.instance_id if self.owner else None,
            "incarnation": self.owner.incarnation if self.owner else None,
            "fencing_token": self.fencing_token,
            "topic": self.topic,
            "tags": dict(self.tags),
            "auto_reconnect": self.auto_reconnect,
            "content_type": self.content_type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "renewed_at": self.renewed_at,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectionRecord:
        if not isinstance(data, Mapping):
            raise InvalidArgument("a connection record must be a JSON object")
        instance_id = _optional_str(data, "instance_id")
        incarnation = _optional_str(data, "incarnation")
        owner = Owner(instance_id, incarnation) if instance_id and incarnation else None
        try:
            status = ConnectionStatus(_require(data, "status", str))
        except ValueError as exc:
            raise InvalidArgument(f"unknown status {data.get('status')!r}") from exc
        tags = data.get("tags") or {}
        if not isinstance(tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise InvalidArgument("record field 'tags' must map strings to strings")
        return cls(
            id=_require(data, "id", str),
            url=_require(data, "url", str),
            status=status,
            owner=owner,
            fencing_token=_require(data, "fencing_token", int),
            topic=_optional_str(data, "topic"),
            tags=tags,
            auto_reconnect=_require(data, "auto_reconnect", bool),
            content_type=_optional_str(data, "content_type") or "text/plain",
            created_at=float(_require(data, "created_at", (int, float))),
            updated_at=float(_require(data, "updated_at", (int, float))),
            renewed_at=float(_require(data, "renewed_at", (int, float))),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ConnectionRecord:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument("connection record is not valid JSON") from exc
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """R4: what an instance writes every interval (``websocketmanager/instances/<id>``)."""

    instance_id: str
    incarnation: str
    last_seen_at: float
    endpoint: str
    connection_count: int = 0

    @property
    def owner(self) -> Owner:
        return Owner(self.instance_id, self.incarnation)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "instance_id": self.instance_id,
                "incarnation": self.incarnation,
                "last_seen_at": self.last_seen_at,
                "endpoint": self.endpoint,
                "connection_count": self.connection_count,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Heartbeat:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument("heartbeat is not valid JSON") from exc
        if not isinstance(data, Mapping):
            raise InvalidArgument("a heartbeat must be a JSON object")
        return cls(
            instance_id=_require(data, "instance_id", str),
            incarnation=_require(data, "incarnation", str),
            last_seen_at=float(_require(data, "last_seen_at", (int, float))),
            endpoint=_require(data, "endpoint", str),
            connection_count=_require(data, "connection_count", int),
        )


def new_incarnation(started_at: float, nonce: str) -> str:
    """R1: a per-process-start token. Sorts by start time, so the newest incarnation of an
    instance id is recognisable (a superseded process learns it must stop)."""
    if not nonce or started_at < 0:
        raise InvalidArgument("an incarnation needs a start time and a random nonce")
    return f"{int(started_at * 1_000_000):020d}-{nonce}"
