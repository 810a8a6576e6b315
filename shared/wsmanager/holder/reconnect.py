"""Auto-reconnect (reference §3.6): exponential backoff with jitter, statuses and events.

When a socket of an ``auto_reconnect`` connection ends abnormally (server Close frame, network
error, missed pong), and the end was not a user Disconnect or a holder stop:

1. status RECONNECTING, one ``reconnecting`` event with ``attempt=1`` (the reference's
   ``attempt`` is always 1: there is no per-attempt event); a network error is announced by an
   ``error`` event *before* it (error before the transition it causes);
2. up to ``ReconnectMaxAttempts`` attempts, attempt *n* after
   ``min(ReconnectBaseDelayMs · 2^(n-1), MaxReconnectDelayMs)`` with "equal jitter" (a random
   point in the upper half of that delay), so a server that drops many connections at once is
   not hit by all of them again at the same instant;
3. success: status CONNECTED, ``connected`` (reason RECONNECTING), the receive loop restarts;
4. exhausted: status DISCONNECTED, ``disconnected`` carrying the last attempt's error in its data.
   No separate ``error`` event there: the reference orders ``reconnecting`` to be followed by
   ``connected`` or ``disconnected``, and ``error`` by ``reconnecting`` or ``disconnected``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import yarl

from wsmanager.core.errors import InvalidArgument
from wsmanager.core.model import ConnectionStatus
from wsmanager.core.validation import redact_url
from wsmanager.holder.connection import Connection, Socket

__all__ = ["ReconnectHooks", "ReconnectPolicy", "describe_error", "reconnect", "scrub"]


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Seconds (settings give milliseconds; tests use tiny values)."""

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 0 or self.base_delay <= 0 or self.max_delay < self.base_delay:
            raise InvalidArgument("reconnect policy: attempts >= 0 and 0 < base <= cap")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before attempt ``attempt`` (1-based): capped exponential, equal jitter."""
        ceiling = min(self.base_delay * 2.0 ** (attempt - 1), self.max_delay)
        return float(ceiling / 2 + rng.random() * ceiling / 2)


class ReconnectHooks(Protocol):
    """What the manager lends the reconnect procedure."""

    async def transition(
        self,
        conn: Connection,
        status: ConnectionStatus,
        *,
        error: BaseException | None = None,
        **fields: Any,
    ) -> object: ...

    async def open_socket(self, conn: Connection) -> Socket: ...

    def count_reconnect(self, outcome: str) -> None: ...


def describe_error(error: BaseException | None, url: str | None = None) -> dict[str, Any]:
    """``error_type``/``error_message`` for events and logs, with no URL credentials in them.

    aiohttp's response errors print the request URL, so for those only the status is kept; any
    other message has the URL (and its userinfo) replaced by the redacted form.
    """
    if error is None:
        return {}
    if isinstance(error, aiohttp.ClientResponseError):
        text = f"HTTP {error.status}: {error.message}"
    else:
        text = str(error) or type(error).__name__
    if url:
        text = scrub(text, url)
    return {"error_type": type(error).__name__, "error_message": text[:500]}


def scrub(text: str, url: str) -> str:
    """``text`` with ``url``'s credentials removed, in whichever spelling it appears."""
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    for spelling in {url, str(yarl.URL(url, encoded=True))}:
        text = text.replace(spelling, redact_url(url))
    if userinfo:
        text = text.replace(userinfo, "***")
    return text


async def reconnect(
    conn: Connection,
    cause: BaseException | None,
    *,
    hooks: ReconnectHooks,
    policy: ReconnectPolicy,
    rng: random.Random,
) -> bool:
    """Run the procedure in the module doc; True if the socket is open again."""
    if policy.max_attempts == 0:
        await hooks.transition(conn, ConnectionStatus.DISCONNECTED, error=cause)
        return False
    await hooks.transition(conn, ConnectionStatus.RECONNECTING, error=cause, attempt=1)
    last_error = cause
    for attempt in range(1, policy.max_attempts + 1):
        await asyncio.sleep(policy.delay(attempt, rng))
        if conn.closing or conn.lost:
            return False
        try:
            ws = await hooks.open_socket(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            last_error = exc
            conn.last_error = describe_error(exc, conn.url)["error_message"]
            hooks.count_reconnect("failed")
            continue
        conn.ws = ws
        hooks.count_reconnect("ok")
        await hooks.transition(conn, ConnectionStatus.CONNECTED)
        return not (conn.lost or conn.closing)
    hooks.count_reconnect("exhausted")
    last: dict[str, Any] = {f"last_{k}": v for k, v in describe_error(last_error, conn.url).items()}
    await hooks.transition(
        conn, ConnectionStatus.DISCONNECTED, error=None, attempts=policy.max_attempts, **last
    )
    return False
