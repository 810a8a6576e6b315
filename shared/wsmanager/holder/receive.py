"""The receive loop of one socket: correlated replies first, everything else to publishing.

aiohttp reassembles fragmented messages (continuation frames) before ``receive()`` returns them
(reference §2.4: fragments are joined until end of message), answers pings (autoping) and runs
the keepalive (``heartbeat=``: a ping every interval, the socket is closed with
``ServerTimeoutError`` when the pong does not come: dead-peer detection). Text frames arrive as
bytes (``decode_text=False``): they are published as bytes anyway, so decoding them would be
wasted work on the hot path.

Every frame is first checked against the pending correlated sends (O(1): at most two dict
lookups, and none at all while nothing is pending); a match completes that send and is not
published. Unmatched frames go to ``on_inbound`` (reference §2.4 step 3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import ServerTimeoutError, WSMsgType

from wsmanager.core.framing import reply_keys, strip_reply
from wsmanager.holder.connection import Connection, Socket

__all__ = ["InboundHandler", "SocketEnd", "receive_frames"]

#: ``(connection, payload, is_text)``; returns an awaitable only when it must wait (backpressure).
InboundHandler = Callable[[Connection, bytes, bool], Awaitable[None] | None]

_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)
_END = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


@dataclass(frozen=True, slots=True)
class SocketEnd:
    """How a socket ended: the close code (if any) and the error (if it was not a clean close)."""

    code: int | None
    error: BaseException | None

    @property
    def ping_timeout(self) -> bool:
        return isinstance(self.error, ServerTimeoutError)


async def receive_frames(conn: Connection, ws: Socket, on_inbound: InboundHandler) -> SocketEnd:
    """Read ``ws`` until it ends; return how it ended (never raises except on cancellation)."""
    receive = ws.receive
    now = asyncio.get_running_loop().time
    while True:
        try:
            msg = await receive()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiohttp reports most failures as messages; be safe
            return SocketEnd(ws.close_code, exc)
        kind = msg.type
        if kind in _DATA:
            data: bytes = msg.data
            is_text = kind is WSMsgType.TEXT
            conn.last_inbound = now()
            conn.frames_in += 1
            pending = conn.pending
            if pending and _complete_reply(pending, data, is_text):
                continue
            waiting = on_inbound(conn, data, is_text)
            if waiting is not None:
                await waiting
        elif kind in _END:
            error = msg.data if kind is WSMsgType.ERROR else ws.exception()
            if not isinstance(error, BaseException):
                error = ws.exception()
            return SocketEnd(ws.close_code, error)
        # PING/PONG are answered and consumed by aiohttp (autoping); nothing else reaches here.


def _complete_reply(
    pending: dict[str | bytes, asyncio.Future[bytes]], data: bytes, is_text: bool
) -> bool:
    for key in reply_keys(data, is_text):
        future = pending.pop(key, None)
        if future is not None:
            if not future.done():
                future.set_result(strip_reply(data, key))
            return True
    return False
