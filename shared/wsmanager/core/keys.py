"""State-store keys of the brief §5. Fixed names: other tools and Dapr deployments read them."""

from __future__ import annotations

from wsmanager.core.errors import InvalidArgument

__all__ = [
    "CONNECTION_INDEX",
    "INSTANCE_INDEX",
    "UNOWNED",
    "connection_key",
    "heartbeat_key",
    "owner_index_key",
    "validate_instance_id",
]

CONNECTION_INDEX = "websocketmanager.connection.index"
INSTANCE_INDEX = "websocketmanager/instances/_index"
#: R11: the per-owner index of released (ownerless) records, waiting for a peer to adopt them.
UNOWNED = "_unowned"
_RESERVED = {UNOWNED, "_index"}


def connection_key(connection_id: str) -> str:
    return f"websocketmanager.connection.{connection_id}"


def owner_index_key(instance_id: str) -> str:
    return f"websocketmanager.instance.index.{instance_id}"


def heartbeat_key(instance_id: str) -> str:
    return f"websocketmanager/instances/{instance_id}"


def validate_instance_id(instance_id: str) -> str:
    """R1: an instance id becomes part of state keys; refuse the reserved and the unprintable."""
    if not instance_id or instance_id in _RESERVED or len(instance_id) > 253:
        raise InvalidArgument(f"invalid instance id {instance_id!r}")
    if any(c.isspace() or c in "/|" or not c.isprintable() for c in instance_id):
        raise InvalidArgument(f"instance id {instance_id!r} may not contain spaces, '/' or '|'")
    return instance_id
