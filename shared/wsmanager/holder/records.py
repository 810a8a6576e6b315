"""Record commands that need no socket: stop publishing, reads, and tags (R3 via the store).

Reads (``get``, ``list``, ``get_tags``, ``get_tag``) come from the shared store, so any holder
answers them for any connection (cluster-wide List). Changes go through
``OwnershipService.update`` (CAS, owner and token checked: R2, R3) behind the fence gate (R8).
Tags are metadata for filtering; they are never sent to the remote socket.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from typing import Any

from wsmanager.core.errors import SelfFenced
from wsmanager.core.model import ConnectionRecord
from wsmanager.core.validation import validate_tag_key, validate_tag_value, validate_tags
from wsmanager.holder.supervisor import Supervisor

__all__ = ["Change", "RecordCommands"]

Change = Callable[[ConnectionRecord], ConnectionRecord]


class RecordCommands(Supervisor):
    async def stop_publish(self, connection_id: str, *, correlation_id: str) -> ConnectionRecord:
        """Stop publishing (topic cleared in the record), whatever the socket's state.
        Raises NotFound, NotOwner, SelfFenced."""
        outcome = "error"
        try:
            stored = await self._update(connection_id, lambda r: r.with_changes(topic=None))
            conn = self.connections.get(connection_id)
            if conn is not None:
                conn.set_topic(None)
            outcome = "ok"
            return stored
        finally:
            self.audit_record("stop_publish", connection_id, correlation_id, outcome=outcome)

    # -- reads and tags ------------------------------------------------------------------------

    async def get(self, connection_id: str) -> ConnectionRecord:
        """The stored record, whoever owns it. Raises NotFound."""
        return (await self.ownership.require(connection_id)).record

    async def list(
        self, filters: Mapping[str, str] | None = None
    ) -> builtins.list[ConnectionRecord]:
        """Every record in the cluster whose tags match all ``filters`` (AND)."""
        wanted = dict(filters or {})
        records = await self.ownership.list_all()
        return [r for r in records if all(r.tags.get(k) == v for k, v in wanted.items())]

    async def get_tags(self, connection_id: str) -> dict[str, str]:
        return dict((await self.get(connection_id)).tags)

    async def get_tag(self, connection_id: str, key: str) -> str | None:
        return (await self.get(connection_id)).tags.get(key)

    async def set_tag(
        self, connection_id: str, key: str, value: str, *, correlation_id: str
    ) -> None:
        """Set one tag (50 tags, key 1-128, value <= 1024; never sent upstream).
        Raises InvalidArgument, NotFound, NotOwner, SelfFenced."""
        checked_key = validate_tag_key(key)
        checked_value = validate_tag_value(checked_key, value)

        def change(record: ConnectionRecord) -> ConnectionRecord:
            merged = validate_tags({**record.tags, checked_key: checked_value})
            return record.with_changes(tags=merged)

        await self._tags(connection_id, change, correlation_id, key=key)

    async def set_tags(
        self, connection_id: str, tags: Mapping[str, str], *, correlation_id: str
    ) -> None:
        """Replace every tag. Raises InvalidArgument, NotFound, NotOwner, SelfFenced."""
        checked = validate_tags(tags)
        await self._tags(connection_id, lambda r: r.with_changes(tags=checked), correlation_id)

    async def _update(self, connection_id: str, change: Change) -> ConnectionRecord:
        """A record change that needs no socket (R3 via ``update``; R8 via the gate)."""
        self.require_running()
        if not self.gate.may_act():
            raise SelfFenced("holder is re-confirming its ownership; try again shortly")
        conn = self.connections.get(connection_id)
        token = conn.token if conn is not None and not conn.lost else None
        return (await self.ownership.update(connection_id, change, token=token)).record

    async def _tags(
        self, connection_id: str, change: Change, correlation_id: str, **extra: Any
    ) -> None:
        outcome = "error"
        try:
            await self._update(connection_id, change)
            outcome = "ok"
        finally:
            self.audit_record("set_tags", connection_id, correlation_id, outcome=outcome, **extra)
