"""The connection manager: the public API over the holder's outbound WebSocket connections.

API fixed with the REST app (``/tmp/holder_interface.md``): connect, send, send_raw, disconnect,
start_publish, stop_publish, get, list, tags, adopt, health, start, stop. Every method raises
only :mod:`wsmanager.core.errors` errors; mutating ones take the caller's ``correlation_id`` and
write an audit record (brief §8). The machinery lives in :mod:`~wsmanager.holder.runtime` and
:mod:`~wsmanager.holder.supervisor`.

Rules kept here, by number (design brief §4):

* **R2** records are created by ``OwnershipService.create`` (owned by me, token 1) and changed
  only by ``update``/``delete`` (CAS on the ETag).
* **R3** only the owner acts: a command for another instance's record raises :class:`NotOwner`
  (forwarding to the owner is the app layer's job).
* **R8** every send and publish passes the fence gate right before its I/O; a fenced holder
  raises :class:`SelfFenced` for sends and holds published frames until it has re-confirmed
  its records (frames of connections found lost are dropped).
* **R9** published frames carry owner, fencing token and a per-connection sequence number.
* **R11** ``stop(drain=True)`` releases every record (ownerless at once), then closes with 1001.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from wsmanager.config import Settings
from wsmanager.core.errors import DeadlineExceeded, InvalidArgument, SelfFenced
from wsmanager.core.framing import correlated_frame, correlation_key, is_text_content_type
from wsmanager.core.model import ConnectionRecord, ConnectionStatus
from wsmanager.core.validation import (
    validate_tags,
    validate_topic,
)
from wsmanager.holder.audit import AuditLog
from wsmanager.holder.connection import Connection
from wsmanager.holder.health import HealthSweep, connection_health
from wsmanager.holder.lease import LeaseKeeper
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.holder.records import RecordCommands
from wsmanager.holder.urlcheck import Resolver, check_target
from wsmanager.ownership import OwnershipService
from wsmanager.ports import Clock, Publisher

__all__ = ["ConnectionManager"]

log = logging.getLogger("wsmanager.holder")


class ConnectionManager(RecordCommands):
    """Owns this holder's sockets (module doc).

    Args:
        session: an aiohttp session the caller owns, built with ``TCPConnector(limit=0)`` (or
            its own limit): the default connector stops at 100 open sockets (brief §6).
        health_interval: seconds between subscription health sweeps.
        connect_timeout: seconds a WebSocket handshake may take.
        publish_batch_size, publish_queue_size: batching of inbound frames into the publisher.
        keep_lease: write heartbeats and renew records here (R4, R6); off when another component
            does (re-confirmation after a lapse, R8, runs either way).
        lease_interval: override of the lease keeper's period (default: heartbeat interval).
        resolver: host-name resolver for the SSRF check (default: the loop's getaddrinfo).
        rng: randomness for reconnect jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        settings: Settings,
        ownership: OwnershipService,
        publisher: Publisher,
        *,
        session: aiohttp.ClientSession,
        clock: Clock,
        audit: AuditLog | None = None,
        metrics: HolderMetrics | None = None,
        health_interval: float = 30.0,
        connect_timeout: float = 10.0,
        publish_batch_size: int = 1000,
        publish_queue_size: int = 100_000,
        keep_lease: bool = True,
        lease_interval: float | None = None,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if health_interval <= 0 or connect_timeout <= 0:
            raise InvalidArgument("health_interval and connect_timeout must be > 0")
        if publish_batch_size < 1 or publish_queue_size < publish_batch_size:
            raise InvalidArgument("publish_batch_size >= 1 and publish_queue_size >= batch size")
        super().__init__(
            settings,
            ownership,
            publisher,
            session=session,
            clock=clock,
            audit=audit,
            metrics=metrics,
            connect_timeout=connect_timeout,
            publish_batch_size=publish_batch_size,
            publish_queue_size=publish_queue_size,
            resolver=resolver,
            rng=rng,
        )
        self.lease = LeaseKeeper(
            ownership,
            self.gate,
            held=lambda: builtins.list(self.connections),
            apply=self.apply_renewal,
            superseded=self.drop_everything,
            keep_lease=keep_lease,
            interval=lease_interval,
        )
        ping = getattr(publisher, "ping", None)
        self.sweeper = HealthSweep(
            connections=lambda: builtins.list(self.connections.values()),
            outbox=self.inbound,
            metrics=metrics,
            keepalive=settings.websocket_heartbeat > 0,
            interval=health_interval,
            ping_publisher=ping if callable(ping) else None,
            extra=self.repair,
        )

    def __repr__(self) -> str:
        return f"ConnectionManager({self.ownership.me}, connections={len(self.connections)})"

    @property
    def instance_id(self) -> str:
        return self.ownership.me.instance_id

    # -- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register and confirm my records (R4, R8), then start publishers, lease keeper and
        health sweep.

        Raises:
            StoreUnavailable: the store is failing; nothing was started.
        """
        if self.running:
            return
        await self.lease.establish()
        self.stopping = False
        self.running = True
        self.spawn(self.inbound.run(), "wsm-publish-inbound")
        self.spawn(self.lifecycle.run(), "wsm-publish-lifecycle")
        self.spawn(self.lease.run(), "wsm-lease")
        self.spawn(self.sweeper.run(), "wsm-health-sweep")

    async def stop(self, drain: bool = False) -> None:
        """Stop reading, publish what was already received, then (``drain``) release my records
        so a peer adopts them at once (R11), and close every socket with 1001 Going Away."""
        if not self.running:
            return
        self.stopping = True
        conns = builtins.list(self.connections.values())
        for conn in conns:
            conn.closing = True
        await asyncio.gather(*(conn.stop_task() for conn in conns))  # no more inbound frames
        await self.inbound.flush(2.0)  # frames received while mine are still published
        released: set[str] = set()
        if drain:
            try:
                released = set(await self.ownership.release_all())
            except Exception as exc:
                log.warning("drain: releasing records failed (%r); peers reclaim after TTL", exc)
        for conn in conns:
            if conn.id in released:
                old = conn.status
                conn.lost = True  # not mine any more: nothing else goes out for it (R8)
                if old is not ConnectionStatus.DISCONNECTED:
                    self.emit(conn, "disconnected", tied=False, reason=old.value, released=True)
        await asyncio.gather(*(self.close(c, 1001) for c in conns))
        await self.lifecycle.flush(1.0)
        self.running = False
        tasks = builtins.list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- commands ------------------------------------------------------------------------------

    async def connect(
        self,
        url: str,
        *,
        tags: Mapping[str, str] | None = None,
        auto_reconnect: bool = False,
        content_type: str = "text/plain",
        correlation_id: str,
    ) -> ConnectionRecord:
        """Open a connection owned by this holder; the record returned is CONNECTED.

        Raises:
            InvalidArgument: bad URL or refused target (SSRF), bad tags or content type, or a
                server that refuses the WebSocket handshake with a 4xx.
            Unavailable: the server cannot be reached (the record is removed again).
            SelfFenced: this holder is re-confirming its ownership (R8).
        """
        conn: Connection | None = None
        outcome = "error"
        try:
            self.require_running()
            await check_target(url, self.settings.allowed_target_hosts, resolver=self.resolver)
            checked_tags = validate_tags(tags)
            is_text_content_type(content_type)  # validates the media type
            if not isinstance(auto_reconnect, bool):
                raise InvalidArgument("auto_reconnect must be true or false")
            if not self.gate.may_act():
                raise SelfFenced("holder is re-confirming its ownership; try again shortly")
            stored = await self.ownership.create(
                str(uuid.uuid4()),
                url,
                tags=checked_tags,
                auto_reconnect=auto_reconnect,
                content_type=content_type,
                status=ConnectionStatus.CONNECTING,
            )
            conn = Connection(stored.record, owner=self.ownership.me, send_limit=self._limit)
            self.connections[conn.id] = conn
            self.emit(conn, "connecting", reason=ConnectionStatus.DISCONNECTED.value)
            try:
                conn.ws = await self.open_socket(conn)
                done = await self.transition(conn, ConnectionStatus.CONNECTED, strict=True)
            except Exception as exc:
                await self.abandon(conn, exc)
                raise self.connect_error(exc, conn) from None
            except BaseException as exc:  # cancelled: clean up without holding the caller
                self.spawn(self.abandon(conn, exc), f"wsm-abandon-{conn.id}")
                raise
            assert done is not None  # strict: a refused write raised above
            conn.task = self.spawn(self.supervise(conn), f"wsm-conn-{conn.id}")
            outcome = "ok"
            return done.record
        finally:
            self.audit_record(
                "connect",
                conn.id if conn else None,
                correlation_id,
                outcome=outcome,
                url=url if isinstance(url, str) else None,
                auto_reconnect=auto_reconnect,
            )

    async def send(
        self,
        connection_id: str,
        payload: bytes,
        *,
        content_type: str | None = None,
        timeout: float | None = None,
        correlation_id: str,
    ) -> bytes:
        """Correlated send (:mod:`wsmanager.core.framing`); returns the reply without prefix.

        Raises:
            NotFound, NotOwner, NotConnected, SelfFenced: see the module doc.
            InvalidArgument: oversize payload, bad content type, not UTF-8 for a text type, bad
                timeout.
            ResourceExhausted: the connection's send queue is full.
            DeadlineExceeded: no reply within ``timeout`` seconds (default DefaultTimeoutMs).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "error"
        try:
            conn = await self.acting_on(connection_id)
            text = self.frame_is_text(conn, content_type, payload)
            seconds = self.send_timeout(timeout)
            correlation = uuid.uuid4().bytes
            key = correlation_key(correlation, text)
            frame = correlated_frame(correlation, bytes(payload), text)
            future: asyncio.Future[bytes] = loop.create_future()
            conn.pending[key] = future  # matched by the receive loop in O(1)
            try:
                async with asyncio.timeout(seconds):
                    await conn.write(frame, text, self.gate)
                    reply = await future
            except TimeoutError:
                outcome = "timeout"
                raise DeadlineExceeded(
                    "Request timeout", connection_id=connection_id, timeout_ms=round(seconds * 1e3)
                ) from None
            finally:
                conn.pending.pop(key, None)
            outcome = "ok"
            return reply
        finally:
            self.observe_send("send", loop.time() - started, outcome)
            self.audit_record("send", connection_id, correlation_id, kind="send", outcome=outcome)

    async def send_raw(
        self,
        connection_id: str,
        payload: bytes,
        *,
        content_type: str | None = None,
        correlation_id: str,
    ) -> None:
        """Fire-and-forget: the payload as one frame, no prefix, no reply awaited. Returns once
        the frame is written. Raises as :meth:`send`, except DeadlineExceeded."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "error"
        try:
            conn = await self.acting_on(connection_id)
            text = self.frame_is_text(conn, content_type, payload)
            await conn.write(bytes(payload), text, self.gate)
            outcome = "ok"
        finally:
            self.observe_send("sendraw", loop.time() - started, outcome)
            self.audit_record(
                "send", connection_id, correlation_id, kind="sendraw", outcome=outcome
            )

    async def disconnect(self, connection_id: str, *, correlation_id: str) -> None:
        """Close with 1000, remove the record and its index entries, emit ``disconnected`` if
        the status changes. Raises NotFound, NotOwner, SelfFenced, StoreUnavailable."""
        outcome = "error"
        try:
            self.require_running()
            stored = await self.ownership.require(connection_id)
            self.ownership.check_may_act(stored.record)  # R3 + R8 before touching the socket
            conn = self.connections.get(connection_id)
            old = conn.status if conn is not None else stored.record.status
            if conn is not None:
                await self.close(conn, 1000)
            await self.ownership.delete(connection_id, token=stored.record.fencing_token)
            if conn is not None and old is not ConnectionStatus.DISCONNECTED:
                conn.status = ConnectionStatus.DISCONNECTED
                self.emit(conn, "disconnected", reason=old.value)
            outcome = "ok"
        finally:
            self.audit_record("disconnect", connection_id, correlation_id, outcome=outcome)

    async def start_publish(
        self, connection_id: str, topic: str, *, correlation_id: str
    ) -> ConnectionRecord:
        """Publish every inbound frame that is not a correlated reply to ``topic`` (persisted;
        a second call replaces it). Needs a connected socket.

        Raises:
            InvalidArgument ("Topic is required"), NotFound, NotOwner, NotConnected, SelfFenced.
        """
        outcome = "error"
        try:
            checked = validate_topic(topic)
            conn = await self.acting_on(connection_id)
            stored = await self.ownership.update(
                connection_id, lambda r: r.with_changes(topic=checked), token=conn.token
            )
            conn.set_topic(checked)
            outcome = "ok"
            return stored.record
        finally:
            self.audit_record(
                "start_publish", connection_id, correlation_id, topic=topic, outcome=outcome
            )

    async def adopt(self, record: ConnectionRecord) -> None:
        """Hold a record a reclaim just gave me (R7). With ``auto_reconnect`` its socket is
        opened in the background (then CONNECTED, or the reconnect procedure); without, nothing
        is opened. Raises NotOwner if the record names another owner."""
        self.require_running()
        await self.adopt_record(record)

    async def health(self) -> dict[str, Any]:
        """Per-connection health, the publisher's state and whether this holder may act (R8)."""
        now = asyncio.get_running_loop().time()
        keepalive = self.settings.websocket_heartbeat > 0
        ok = self.inbound.publisher_ok
        return {
            "instance_id": self.instance_id,
            "running": self.running,
            "may_act": self.gate.may_act(),
            "connections": {
                c.id: connection_health(c, now=now, keepalive=keepalive, publisher_ok=ok)
                for c in builtins.list(self.connections.values())
            },
            "publisher": {
                "reachable": ok,
                "last_error": self.inbound.last_error,
                "queued": len(self.inbound),
                "published": self.inbound.published,
                "dropped": self.inbound.dropped,
            },
            "lifecycle_queue": len(self.lifecycle),
            "sweep": dict(self.sweeper.last),
        }

    # -- helpers -------------------------------------------------------------------------------

    @property
    def _limit(self) -> int:
        return self.settings.send_queue_size
