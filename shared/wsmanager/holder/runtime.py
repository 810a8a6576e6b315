"""The machinery under :class:`~wsmanager.holder.manager.ConnectionManager`: opening sockets,
status transitions with their lifecycle events, the per-connection supervisor task, adoption,
and dropping connections that are no longer mine.

Status transitions (reference §2.2, §4.2) all go through :meth:`Runtime.transition`:

* an event is emitted only when the status really changes;
* an ``error`` event, when there is one, is queued *before* the transition's own event;
* the record is changed through ``OwnershipService.update`` (CAS on the ETag, R2/R3); when the
  store refuses, the local status still changes (the socket is what it is) and the health sweep
  writes it later; when the record is no longer mine, the connection is dropped (R8);
* events are best-effort: they are queued for the lifecycle outbox and never raise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Coroutine
from typing import Any

import aiohttp

from wsmanager.config import Settings
from wsmanager.core.errors import (
    InvalidArgument,
    NotConnected,
    NotFound,
    NotOwner,
    SelfFenced,
    Unavailable,
    WsmError,
)
from wsmanager.core.framing import is_text_content_type, utf8
from wsmanager.core.model import ConnectionRecord, ConnectionStatus, check_transition
from wsmanager.holder.audit import AuditLog
from wsmanager.holder.connection import Connection, Socket
from wsmanager.holder.events import STATUS_EVENTS, lifecycle_event
from wsmanager.holder.fencing import FenceGate
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.holder.outbox import Outbox
from wsmanager.holder.reconnect import ReconnectPolicy, describe_error
from wsmanager.holder.urlcheck import Resolver, check_target, system_resolver
from wsmanager.ownership import OwnershipService, RenewReport, Stored
from wsmanager.ports import Clock, Publisher

__all__ = ["Runtime", "closed_error", "log"]

log = logging.getLogger("wsmanager.holder")

#: R7: at most this many adopted sockets are being opened at once (no reconnect storm when a
#: sweep hands this holder a dead peer's thousand connections).
OPEN_CONCURRENCY = 100

#: Inbound messages may be larger than what callers may send (exchange snapshots); aiohttp's
#: own default is the floor.
_MIN_INBOUND_BYTES = 4 * 1024 * 1024
_MAX_TIMEOUT = 600.0


class Runtime:
    """State and machinery shared by the manager's public methods (module doc)."""

    def __init__(
        self,
        settings: Settings,
        ownership: OwnershipService,
        publisher: Publisher,
        *,
        session: aiohttp.ClientSession,
        clock: Clock,
        audit: AuditLog | None,
        metrics: HolderMetrics | None,
        connect_timeout: float,
        publish_batch_size: int,
        publish_queue_size: int,
        resolver: Resolver | None,
        rng: random.Random | None,
    ) -> None:
        self.settings = settings
        self.ownership = ownership
        self.publisher = publisher
        self.session = session
        self.clock = clock
        self.audit = audit
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.resolver = resolver or system_resolver
        self.rng = rng or random.Random()
        self.policy = ReconnectPolicy(
            max_attempts=settings.reconnect_max_attempts,
            base_delay=settings.reconnect_base_delay_ms / 1000,
            max_delay=settings.max_reconnect_delay_ms / 1000,
        )
        self.gate = FenceGate(ownership)
        if metrics is not None:
            self.gate.on_fence = metrics.self_fence_events.inc
        #: Bounds the adopted sockets opening at once (R7).
        self.open_slots = asyncio.Semaphore(OPEN_CONCURRENCY)
        self.inbound = Outbox(
            publisher,
            self.gate,
            name="inbound",
            maxsize=publish_queue_size,
            batch_size=publish_batch_size,
            retry=True,
            on_published=self._count_published,
            on_failed=self._count_publish_failed,
        )
        # Lifecycle events are best-effort (reference §4.2): bounded, never retried.
        self.lifecycle = Outbox(publisher, self.gate, name="lifecycle", batch_size=100, retry=False)
        self.connections: dict[str, Connection] = {}
        #: Records of failed first connects that could not be deleted yet (the sweep retries).
        self.orphans: set[str] = set()
        self.frames_total = 0
        self.running = False
        self.stopping = False
        self._background: set[asyncio.Task[Any]] = set()

    # -- small helpers -----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A background task the runtime keeps a reference to (and cancels on stop)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def emit(self, conn: Connection, kind: str, *, tied: bool = True, **data: Any) -> None:
        """Queue one lifecycle event about ``conn``. Best-effort: never raises.

        A ``tied`` event is dropped if ``conn`` turns out lost before it is published (R8);
        an untied one (the last word about a released record, R11) is published regardless.
        """
        try:
            message = lifecycle_event(
                kind,
                connection_id=conn.id,
                url=conn.url,
                owner=self.ownership.me,
                now=self.clock.now(),
                fencing_token=conn.token,
                **data,
            )
            self.lifecycle.offer(conn if tied else None, message)
            if self.metrics is not None:
                self.metrics.lifecycle_events.labels(type=kind).inc()
        except Exception as exc:  # an event must never break the transition it reports
            _log(logging.WARNING, "lifecycle event %s for %s not queued: %r", kind, conn.id, exc)

    def emit_record(self, record: ConnectionRecord, kind: str, **data: Any) -> None:
        """Queue a lifecycle event about a record this holder may hold no socket for (e.g.
        ``reclaimed``, R7). Best-effort: never raises."""
        try:
            message = lifecycle_event(
                kind,
                connection_id=record.id,
                url=record.url,
                owner=self.ownership.me,
                now=self.clock.now(),
                fencing_token=record.fencing_token,
                **data,
            )
            self.lifecycle.offer(None, message)
            if self.metrics is not None:
                self.metrics.lifecycle_events.labels(type=kind).inc()
        except Exception as exc:
            _log(logging.WARNING, "lifecycle event %s for %s not queued: %r", kind, record.id, exc)

    def count_reconnect(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reconnects.labels(outcome=outcome).inc()

    def _count_published(self, count: int, lag: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_publish(lag, "ok", count)

    def _count_publish_failed(self, count: int, error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.observe_publish(0.0, "failed", count)

    # -- guards shared by the commands ---------------------------------------------------------

    def require_running(self) -> None:
        if not self.running or self.stopping:
            raise Unavailable("the connection manager is not running")

    async def acting_on(self, connection_id: str) -> Connection:
        """R3 + R8: the open connection I own, or the error that says why not."""
        self.require_running()
        conn = self.connections.get(connection_id)
        if conn is None or conn.lost:
            stored = await self.ownership.get(connection_id)
            if stored is None:
                raise NotFound(f"Connection not found: {connection_id}")
            record = stored.record
            if record.owner != self.ownership.me:
                owner = record.owner.instance_id if record.owner else None
                raise NotOwner(connection_id, owner, record.fencing_token)
            conn = None
        if not self.gate.may_act():
            raise SelfFenced("holder is re-confirming its ownership; try again shortly")
        if conn is None or not conn.is_open:
            raise NotConnected(connection_id)
        return conn

    def frame_is_text(self, conn: Connection, content_type: str | None, payload: bytes) -> bool:
        """Check an outbound payload; True if it goes as a Text frame (reference §2.4).

        Raises:
            InvalidArgument: not bytes, over MaxMessageBytes, bad content type, or not UTF-8
                for a text content type (RFC 6455 §8.1).
        """
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise InvalidArgument("payload must be bytes")
        limit = self.settings.max_message_bytes
        if len(payload) > limit:
            raise InvalidArgument(f"message is larger than MaxMessageBytes ({limit} bytes)")
        text = is_text_content_type(content_type or conn.content_type)
        if text:
            utf8(bytes(payload))
        return text

    def send_timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.settings.default_timeout_ms / 1000
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidArgument("timeout must be a number of seconds")
        if math.isnan(timeout) or not 0 < timeout <= _MAX_TIMEOUT:
            raise InvalidArgument(f"timeout must be > 0 and at most {_MAX_TIMEOUT:g} seconds")
        return float(timeout)

    def observe_send(self, kind: str, seconds: float, outcome: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.observe_send(kind, seconds, outcome)
            except Exception:  # metrics never fail a send
                pass

    def audit_record(
        self, action: str, connection_id: str | None, correlation_id: str, **fields: Any
    ) -> None:
        if self.audit is not None:  # AuditLog.record never raises
            self.audit.record(
                action,
                instance_id=self.ownership.me.instance_id,
                connection_id=connection_id,
                correlation_id=correlation_id,
                **fields,
            )

    # -- transitions ---------------------------------------------------------------------------

    async def transition(
        self,
        conn: Connection,
        status: ConnectionStatus,
        *,
        error: BaseException | None = None,
        strict: bool = False,
        **fields: Any,
    ) -> Stored | None:
        """Change ``conn``'s status (module doc). ``strict`` re-raises a refused store write
        (used by Connect, which must not answer CONNECTED unless the record says so)."""
        old = conn.status
        if old is status:
            return None
        check_transition(old, status)
        if error is not None:
            self.emit(conn, "error", reason=old.value, **describe_error(error, conn.url))
        conn.status = status
        stored: Stored | None = None
        try:
            stored = await self.ownership.update(
                conn.id, lambda r: r.with_changes(status=status), token=conn.token
            )
            conn.status_dirty = False
        except (NotOwner, NotFound):
            await self.drop_lost(conn)  # R8: not mine any more; its new owner reports it
            if strict:
                raise
            return None
        except Exception as exc:
            if strict:
                raise
            conn.status_dirty = True
            _log(logging.WARNING, "status %s of %s not stored yet: %r", status, conn.id, exc)
        self.emit(conn, STATUS_EVENTS[status], reason=old.value, **fields)
        return stored

    # -- sockets -------------------------------------------------------------------------------

    async def open_socket(self, conn: Connection) -> Socket:
        """Open ``conn``'s socket: SSRF re-check (DNS may have changed), handshake, keepalive.

        Raises:
            SelfFenced: the gate is closed (R8): a fenced holder opens nothing.
            InvalidArgument / Unavailable: see :func:`check_target`; aiohttp errors as they are.
        """
        if not self.gate.may_act():
            raise SelfFenced("holder is re-confirming its ownership; not opening sockets")
        settings = self.settings
        await check_target(conn.url, settings.allowed_target_hosts, resolver=self.resolver)
        heartbeat = settings.websocket_heartbeat or None
        async with asyncio.timeout(self.connect_timeout):
            ws = await self.session.ws_connect(
                conn.url,
                heartbeat=heartbeat,
                autoping=True,
                compress=15 if settings.websocket_compression else 0,
                max_msg_size=max(settings.max_message_bytes, _MIN_INBOUND_BYTES),
                decode_text=False,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            )
        conn.connected_at = asyncio.get_running_loop().time()
        conn.last_error = None
        return ws

    def connect_error(self, exc: BaseException, conn: Connection) -> WsmError:
        """The error a failed first connect answers with (no credentials in it)."""
        if isinstance(exc, WsmError):
            return exc
        where = conn.redacted_url
        if isinstance(exc, aiohttp.WSServerHandshakeError):
            status = exc.status
            if status < 500 and status not in (408, 429):
                return InvalidArgument(
                    f"{where} refused the WebSocket handshake (HTTP {status}); "
                    "is it a WebSocket endpoint?"
                )
            return Unavailable(f"{where} refused the WebSocket handshake (HTTP {status})")
        if isinstance(exc, TimeoutError):
            return Unavailable(
                f"could not connect to {where}: no handshake within {self.connect_timeout:g}s"
            )
        text = describe_error(exc, conn.url)["error_message"]
        return Unavailable(f"could not connect to {where}: {type(exc).__name__}: {text}")

    # -- local end of a connection -------------------------------------------------------------

    def forget(self, conn: Connection) -> None:
        """Stop tracking ``conn`` locally (its record stays, e.g. DISCONNECTED)."""
        if self.connections.get(conn.id) is conn:
            del self.connections[conn.id]

    async def close(self, conn: Connection, code: int) -> None:
        """End ``conn`` locally: supervisor cancelled, socket closed with ``code``."""
        conn.closing = True
        self.forget(conn)
        await conn.stop_task()
        conn.fail_pending(closed_error(conn.id))
        await conn.close_socket(code)

    async def drop_lost(self, conn: Connection) -> None:
        """R8: the record is not mine any more. Nothing more is sent or published for it; its
        queued events are discarded by the outboxes."""
        if conn.lost:
            return
        conn.lost = True
        _log(logging.WARNING, "connection %s is no longer mine; dropping its socket", conn.id)
        conn.fail_pending(NotOwner(conn.id, None, conn.token, "connection is no longer mine"))
        await self.close(conn, 1001)

    async def apply_renewal(self, report: RenewReport) -> None:
        """Act on a renewal/re-confirmation: drop what is lost (or re-owned at a new token)."""
        for connection_id, conn in list(self.connections.items()):
            token = report.renewed.get(connection_id)
            if connection_id in report.lost or (token is not None and token != conn.token):
                await self.drop_lost(conn)

    async def drop_everything(self) -> None:
        """R1: a newer incarnation owns my instance id; this process must stop acting for good."""
        for conn in list(self.connections.values()):
            await self.drop_lost(conn)


def closed_error(connection_id: str) -> NotConnected:
    """The error waiting correlated sends get when their socket goes away."""
    return NotConnected(connection_id, "WebSocket closed before the reply arrived")


def _log(level: int, message: str, *args: object) -> None:
    try:
        log.log(level, message, *args)
    except Exception:  # background logging is fire-and-forget
        pass
