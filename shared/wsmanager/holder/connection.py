"""One held connection: its socket, its runtime state and its outbound path.

The persisted record is the source of truth for *what* the connection is (id, url, topic, tags,
owner, token); this object holds what only the owning process has (reference §2.1 "runtime
only"): the socket, the pending correlated sends, the sequence counter of R9, the send queue.

Outbound path: every frame goes through :meth:`Connection.write`, which bounds the number of
frames waiting for the socket (``send_limit``: ResourceExhausted beyond it, so a slow server
pushes back on callers instead of growing memory), writes them one at a time in arrival order,
and passes the fence gate (R8) right before the socket write.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import aiohttp
from aiohttp import WSMsgType

from wsmanager.core.errors import NotConnected, NotOwner, ResourceExhausted, SelfFenced
from wsmanager.core.framing import inbound_content_type
from wsmanager.core.model import ConnectionRecord, ConnectionStatus, Owner
from wsmanager.core.validation import redact_url
from wsmanager.holder.events import InboundTemplate
from wsmanager.holder.fencing import FenceGate

__all__ = ["Connection", "Socket", "abort_transport"]

#: Sockets are opened with ``decode_text=False``: Text frames arrive as UTF-8 bytes.
Socket = aiohttp.ClientWebSocketResponse[Literal[False]]
_CLOSE_TIMEOUT = 2.0


class Connection:
    """Runtime state of one connection this holder owns (see module doc)."""

    def __init__(self, record: ConnectionRecord, *, owner: Owner, send_limit: int) -> None:
        self.id = record.id
        self.url = record.url
        self.redacted_url = redact_url(record.url)
        self.content_type = record.content_type
        self.auto_reconnect = record.auto_reconnect
        self.owner = owner
        self.token = record.fencing_token
        self.status = record.status
        self.topic: str | None = None
        self.template: InboundTemplate | None = None
        self.ws: Socket | None = None
        #: Correlated sends waiting for their reply, by wire prefix (framing.correlation_key).
        self.pending: dict[str | bytes, asyncio.Future[bytes]] = {}
        #: R9: per-connection sequence of published inbound frames (never reset while held).
        self.sequence = 0
        self.frames_in = 0
        self.last_inbound: float | None = None  # loop time
        self.connected_at: float | None = None  # loop time
        self.last_error: str | None = None
        self.ping_timeouts = 0
        #: R8: the record is no longer mine; nothing may be sent or published for it again.
        self.lost = False
        #: A user Disconnect or a holder stop is closing it: the receive loop ends silently.
        self.closing = False
        #: The status could not be written to the store; the health sweep retries it.
        self.status_dirty = False
        self.task: asyncio.Task[None] | None = None
        self.send_limit = send_limit
        self.inflight = 0
        self._send_lock = asyncio.Lock()
        self.set_topic(record.topic)

    def __repr__(self) -> str:
        return f"Connection({self.id!r}, {self.status.value}, url={self.redacted_url!r})"

    # -- publishing ------------------------------------------------------------------------

    def set_topic(self, topic: str | None) -> None:
        """Start (or stop, with ``None``) publishing inbound frames to ``topic``."""
        self.topic = topic
        self.template = (
            None
            if topic is None
            else InboundTemplate(
                connection_id=self.id,
                url=self.url,
                topic=topic,
                owner=self.owner,
                fencing_token=self.token,
                text_content_type=inbound_content_type(True, self.content_type),
                binary_content_type=inbound_content_type(False, self.content_type),
            )
        )

    # -- state -----------------------------------------------------------------------------

    @property
    def socket_alive(self) -> bool:
        return self.ws is not None and not self.ws.closed

    @property
    def is_open(self) -> bool:
        return self.status is ConnectionStatus.CONNECTED and self.socket_alive

    def fail_pending(self, error: Exception) -> None:
        """Wake every waiting correlated send with ``error`` (the socket is gone)."""
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # -- outbound --------------------------------------------------------------------------

    async def write(self, frame: bytes, text: bool, gate: FenceGate) -> None:
        """Write one frame (Text frames carry UTF-8 the caller has checked).

        Raises:
            ResourceExhausted: ``send_limit`` frames are already waiting for this socket.
            NotConnected: the socket is not open, or failed during the write.
            NotOwner: the connection was found lost (R8).
            SelfFenced: the fence gate is closed (R8).
        """
        if self.inflight >= self.send_limit:
            raise ResourceExhausted(
                f"send queue of connection {self.id} is full ({self.send_limit} waiting)",
                connection_id=self.id,
            )
        self.inflight += 1
        try:
            async with self._send_lock:
                if self.lost:
                    raise NotOwner(self.id, None, self.token, "connection is no longer mine")
                ws = self.ws
                if ws is None or ws.closed or self.status is not ConnectionStatus.CONNECTED:
                    raise NotConnected(self.id)
                if not gate.may_act():  # R8: the last check before the socket write
                    raise SelfFenced(f"holder is re-confirming its ownership; {self.id} not sent")
                try:
                    await ws.send_frame(frame, WSMsgType.TEXT if text else WSMsgType.BINARY)
                except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                    raise NotConnected(
                        self.id, f"WebSocket is not connected ({type(exc).__name__})"
                    ) from None
        finally:
            self.inflight -= 1

    async def close_socket(self, code: int) -> None:
        """Close the socket with ``code`` (1000 normal, 1001 going away); never raises."""
        ws, self.ws = self.ws, None
        if ws is None:
            return
        try:
            if not ws.closed:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await ws.close(code=code)
        except Exception:  # a dead or stalled peer: drop the connection without a handshake
            abort_transport(ws)
            return
        if self.inflight:
            # Writers still blocked on a full buffer (a peer that stopped reading): a graceful
            # close waits for that buffer to drain, which never happens. Drop it.
            abort_transport(ws)

    async def stop_task(self) -> None:
        """Cancel the supervisor task (receive loop / reconnect) and wait for it to end."""
        task, self.task = self.task, None
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            pass


def abort_transport(ws: Socket) -> None:
    """Abort the socket's transport. A graceful close waits for unsent data to drain, which
    a peer that stopped reading never allows: writers blocked on it would wait forever (their
    ``drain`` only ends when the connection is lost)."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        try:
            abort()
        except Exception:  # already gone
            pass
