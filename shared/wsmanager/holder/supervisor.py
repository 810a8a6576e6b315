"""Per-connection supervision: the receive loop task, reconnects, adoption, and repairs.

Each held connection has exactly one task (:meth:`Supervisor.supervise`): it runs the receive
loop, and when the socket ends abnormally either runs the reconnect procedure (``auto_reconnect``,
reference §3.6) or records DISCONNECTED. A user Disconnect or a holder stop sets
``conn.closing`` first, so the loop ends silently (reference §3.6: "a user Disconnect's
cancellation exits silently"). One task per connection, not two (no separate writer), keeps an
idle connection small (brief §7: 10,000 idle connections at ≤ 2× bare aiohttp's RSS).
"""

from __future__ import annotations

import asyncio
from typing import Any

from wsmanager.core.errors import NotFound, NotOwner
from wsmanager.core.model import ConnectionRecord, ConnectionStatus
from wsmanager.holder.connection import Connection, abort_transport
from wsmanager.holder.receive import receive_frames
from wsmanager.holder.reconnect import describe_error, reconnect
from wsmanager.holder.runtime import Runtime, closed_error, log

__all__ = ["Supervisor"]


class Supervisor(Runtime):
    def on_inbound(self, conn: Connection, data: bytes, is_text: bool) -> Any:
        """Hot path: one inbound frame that was not a correlated reply (R9 numbering)."""
        self.frames_total += 1
        template = conn.template
        if template is None:
            return None  # not publishing: the reference drops unmatched frames then
        conn.sequence += 1
        message = template.build(data, is_text, conn.sequence, self.clock.now())
        if self.inbound.offer(conn, message):
            return None
        return self.inbound.put(conn, message)  # full: the receive loop waits for space

    async def supervise(self, conn: Connection, *, open_first: bool = False) -> None:
        """The one task per connection: receive loop, then reconnect or give up."""
        try:
            if open_first and not await self._open_adopted(conn):
                self.forget(conn)
                return
            while True:
                ws = conn.ws
                if ws is None:
                    return
                end = await receive_frames(conn, ws, self.on_inbound)
                if conn.closing or conn.lost:
                    return
                if conn.inflight:  # it ended under writers blocked on its buffer: wake them
                    abort_transport(ws)
                if end.ping_timeout:
                    conn.ping_timeouts += 1  # dead peer: keepalive pong missing
                if end.error is not None:
                    conn.last_error = describe_error(end.error, conn.url)["error_message"]
                conn.ws = None
                conn.fail_pending(closed_error(conn.id))
                if conn.auto_reconnect and not self.stopping:
                    if await reconnect(
                        conn, end.error, hooks=self, policy=self.policy, rng=self.rng
                    ):
                        continue
                else:
                    await self.transition(
                        conn, ConnectionStatus.DISCONNECTED, error=end.error, close_code=end.code
                    )
                self.forget(conn)  # the record stays (DISCONNECTED); commands read it
                return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: keep the holder alive, leave a trace
            log.exception("supervisor of %s failed", conn.id)
            self.forget(conn)

    async def _open_adopted(self, conn: Connection) -> bool:
        try:
            async with self.open_slots:  # R7: bounded concurrency, no reconnect storm
                if conn.lost or conn.closing:
                    return False
                conn.ws = await self.open_socket(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            conn.last_error = describe_error(exc, conn.url)["error_message"]
            return await reconnect(conn, exc, hooks=self, policy=self.policy, rng=self.rng)
        await self.transition(conn, ConnectionStatus.CONNECTED)
        return not (conn.lost or conn.closing)

    async def adopt_record(self, record: ConnectionRecord) -> None:
        """R7: hold a record a takeover gave me; open its socket only if auto_reconnect."""
        if record.owner != self.ownership.me:
            owner = record.owner.instance_id if record.owner else None
            raise NotOwner(record.id, owner, record.fencing_token)
        held = self.connections.get(record.id)
        if held is not None and held.token == record.fencing_token:
            return  # already held at this token
        if held is not None:
            await self.drop_lost(held)
        if not record.auto_reconnect or record.status is ConnectionStatus.DISCONNECTED:
            return  # re-owned without a socket; commands answer "not connected"
        conn = Connection(record, owner=self.ownership.me, send_limit=self.settings.send_queue_size)
        self.connections[record.id] = conn
        conn.task = self.spawn(self.supervise(conn, open_first=True), f"wsm-conn-{record.id}")

    async def abandon(self, conn: Connection, exc: BaseException) -> None:
        """A first connect failed: ``error`` then ``disconnected``, socket closed, record
        removed (reference §2.2: a failed initial connect removes the record)."""
        await self.close(conn, 1000)
        old = conn.status
        if isinstance(exc, Exception):
            self.emit(conn, "error", reason=old.value, **describe_error(exc, conn.url))
        conn.status = ConnectionStatus.DISCONNECTED
        self.emit(conn, "disconnected", reason=old.value)
        try:
            await self.ownership.delete(conn.id, token=conn.token)
        except NotFound:
            pass
        except Exception as err:
            self.orphans.add(conn.id)  # the health sweep retries the delete
            log.warning("record of failed connect %s not removed yet: %r", conn.id, err)

    async def repair(self) -> None:
        """Health-sweep chores: write statuses the store refused earlier, delete orphans."""
        for conn in list(self.connections.values()):
            if conn.status_dirty and not conn.lost:
                await self._store_status(conn, conn.status)
        for connection_id in list(self.orphans):
            try:
                await self.ownership.delete(connection_id)
            except NotFound:
                pass
            except Exception:
                continue
            self.orphans.discard(connection_id)

    async def _store_status(self, conn: Connection, status: ConnectionStatus) -> None:
        try:
            await self.ownership.update(
                conn.id, lambda r: r.with_changes(status=status), token=conn.token
            )
            conn.status_dirty = False
        except (NotOwner, NotFound):
            await self.drop_lost(conn)
        except Exception:
            pass  # still refused: the next sweep tries again
