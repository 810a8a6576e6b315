"""Connection health: the snapshot behind ``health()`` and the subscription health sweep.

The sweep runs every ``interval`` seconds and checks every *publishing* connection: is the socket
alive, are pings answered (aiohttp closes a socket whose pong is late, so "alive with keepalive
on" means answered), is the publisher reachable, how old is the last inbound frame. It refreshes
the connection gauges and writes one log line per unhealthy connection plus a summary.

Its logging is fire-and-forget (reference §6: logging failures in background sweeps are caught):
nothing a log handler or a metric does can raise out of a sweep, and nothing a sweep does can end
the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from wsmanager.holder.cancel import raise_if_cancelled
from wsmanager.holder.connection import Connection
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.holder.outbox import Outbox

__all__ = ["HealthSweep", "connection_health"]

log = logging.getLogger("wsmanager.holder.health")


def connection_health(
    conn: Connection, *, now: float, keepalive: bool, publisher_ok: bool
) -> dict[str, Any]:
    """One connection's health facts (JSON-ready)."""
    alive = conn.socket_alive
    age = None if conn.last_inbound is None else round(max(now - conn.last_inbound, 0.0), 3)
    publishing = conn.topic is not None
    healthy = alive and (publisher_ok or not publishing)
    return {
        "status": conn.status.value,
        "socket_alive": alive,
        "pings_answered": (alive if keepalive else None),
        "ping_timeouts": conn.ping_timeouts,
        "last_inbound_age_seconds": age,
        "frames_in": conn.frames_in,
        "publishing": publishing,
        "topic": conn.topic,
        "publisher_reachable": publisher_ok if publishing else None,
        "sequence": conn.sequence,
        "send_queue": conn.inflight,
        "pending_sends": len(conn.pending),
        "last_error": conn.last_error,
        "healthy": healthy,
    }


class HealthSweep:
    """The periodic subscription health check (module doc)."""

    def __init__(
        self,
        *,
        connections: Callable[[], Iterable[Connection]],
        outbox: Outbox,
        metrics: HolderMetrics | None,
        keepalive: bool,
        interval: float,
        ping_publisher: Callable[[], Awaitable[None]] | None = None,
        extra: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._connections = connections
        self._outbox = outbox
        self._metrics = metrics
        self._keepalive = keepalive
        self.interval = interval
        self._ping_publisher = ping_publisher
        self._extra = extra
        #: The last sweep's findings (``health()`` adds them to its answer).
        self.last: dict[str, Any] = {}
        self.sweeps = 0

    async def run(self) -> None:
        while True:
            raise_if_cancelled()
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad sweep end the loop
                raise_if_cancelled(exc)
                _log(logging.WARNING, "health sweep failed: %s: %s", type(exc).__name__, exc)

    async def sweep(self) -> dict[str, Any]:
        conns = list(self._connections())
        publishing = [c for c in conns if c.topic is not None]
        if publishing and self._ping_publisher is not None:
            await self._check_publisher()
        if self._extra is not None:
            await self._extra()  # e.g. re-persist statuses the store refused earlier
        now = asyncio.get_running_loop().time()
        publisher_ok = self._outbox.publisher_ok
        unhealthy: dict[str, dict[str, Any]] = {}
        for conn in publishing:
            facts = connection_health(
                conn, now=now, keepalive=self._keepalive, publisher_ok=publisher_ok
            )
            if not facts["healthy"]:
                unhealthy[conn.id] = facts
        self._feed_metrics(conns)
        self.sweeps += 1
        self.last = {
            "publishing": len(publishing),
            "unhealthy": sorted(unhealthy),
            "publisher_reachable": publisher_ok,
            "publish_queue": len(self._outbox),
        }
        for connection_id, facts in unhealthy.items():
            _log(
                logging.WARNING,
                "subscription unhealthy: connection=%s topic=%s status=%s socket_alive=%s "
                "publisher_reachable=%s last_inbound_age=%s",
                connection_id,
                facts["topic"],
                facts["status"],
                facts["socket_alive"],
                facts["publisher_reachable"],
                facts["last_inbound_age_seconds"],
            )
        _log(
            logging.INFO,
            "subscription health: %d publishing, %d unhealthy, publisher %s, %d queued",
            len(publishing),
            len(unhealthy),
            "reachable" if publisher_ok else "UNREACHABLE",
            len(self._outbox),
        )
        return self.last

    async def _check_publisher(self) -> None:
        assert self._ping_publisher is not None
        try:
            async with asyncio.timeout(max(self.interval / 2, 0.1)):
                await self._ping_publisher()
            if self._outbox.failed_batches == 0 or len(self._outbox) == 0:
                self._outbox.publisher_ok = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._outbox.publisher_ok = False
            self._outbox.last_error = f"{type(exc).__name__}: {exc}"

    def _feed_metrics(self, conns: list[Connection]) -> None:
        if self._metrics is None:
            return
        try:
            counts = Counter(c.status.value for c in conns)
            self._metrics.set_connection_counts(counts)
            self._metrics.queue_depth.set(sum(c.inflight for c in conns))
        except Exception:  # metrics are best-effort too
            pass


def _log(level: int, message: str, *args: object) -> None:
    try:
        log.log(level, message, *args)
    except Exception:  # fire-and-forget: a broken handler never fails or stops the sweep
        pass
