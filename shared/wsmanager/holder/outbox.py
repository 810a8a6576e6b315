"""The publish queue: events wait here and are drained in batches into ``publish_many``.

One :class:`Outbox` per kind of event and holder (inbound frames; lifecycle events). Batching is
what makes the publishing rate (brief §7: ≥ 50,000 inbound frames/s into Redis Streams) reachable:
the per-call cost of a publisher is paid once per batch, not once per frame.

Rules the drain loop keeps:

* **R8.** Right before every ``publish_many`` it passes the fence gate. While the gate is closed
  nothing is published: events wait (in order). Events of a connection that turned out to be
  lost are dropped at drain time (``source.lost``), never published.
* **Order.** FIFO; a batch keeps queue order, so events of one connection stay in order.
* **Failures.** Inbound outboxes (``retry=True``) keep a failed batch and retry it with capped
  backoff: the queue fills and the receive loops wait for space, so frames back up into the
  sockets instead of being dropped. Lifecycle outboxes (``retry=False``) are best-effort
  (reference §4.2): a failed batch is logged and dropped, and a full queue drops its oldest event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from wsmanager.core.errors import WsmError
from wsmanager.holder.cancel import raise_if_cancelled
from wsmanager.holder.fencing import FenceGate
from wsmanager.ports import Message, Publisher

__all__ = ["Outbox", "Source"]

log = logging.getLogger("wsmanager.holder.outbox")


class Source(Protocol):
    """What an event came from; ``lost`` turns true when the connection is no longer mine."""

    @property
    def lost(self) -> bool: ...


class Outbox:
    """A bounded FIFO of ``(source, message)`` drained by :meth:`run` (see module doc)."""

    def __init__(
        self,
        publisher: Publisher,
        gate: FenceGate,
        *,
        name: str,
        maxsize: int = 100_000,
        batch_size: int = 1000,
        retry: bool = True,
        on_published: Callable[[int, float], None] | None = None,
        on_failed: Callable[[int, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.retry = retry
        self._publisher = publisher
        self._gate = gate
        self._items: deque[tuple[Source | None, Message, float]] = deque()
        self._nonempty = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_published = on_published
        self._on_failed = on_failed
        #: Health facts (brief: subscription health sweep).
        self.publisher_ok = True
        self.last_error: str | None = None
        self.published = 0
        self.dropped = 0
        self.failed_batches = 0

    def __repr__(self) -> str:
        return f"Outbox({self.name!r}, queued={len(self._items)})"

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, source: Source | None, message: Message) -> bool:
        """Queue without waiting. False if full (inbound); a best-effort outbox drops its oldest
        event instead and always accepts."""
        items = self._items
        if len(items) >= self.maxsize:
            if self.retry:
                self._space.clear()
                return False
            items.popleft()
            self.dropped += 1
        items.append((source, message, time.monotonic()))
        self._idle.clear()
        self._nonempty.set()
        return True

    async def put(self, source: Source | None, message: Message) -> None:
        """Queue, waiting for space while the queue is full (backpressure into the socket)."""
        while not self.offer(source, message):
            await self._space.wait()

    def _take(self) -> list[tuple[Source | None, Message, float]]:
        items = self._items
        batch: list[tuple[Source | None, Message, float]] = []
        while items and len(batch) < self.batch_size:
            item = items.popleft()
            source = item[0]
            if source is not None and source.lost:
                self.dropped += 1  # R8: a lost connection's held events are never published
                continue
            batch.append(item)
        if len(items) < self.maxsize:
            self._space.set()
        return batch

    async def run(self) -> None:
        """Drain forever (until cancelled)."""
        backoff = 0.05
        batch: list[tuple[Source | None, Message, float]] = []
        while True:
            raise_if_cancelled()
            if not batch:
                if not self._items:
                    self._idle.set()
                    self._nonempty.clear()
                    await self._nonempty.wait()
                    continue
            # R8: the last check before I/O; while closed, events wait in order.
            if not await self._gate.wait_open(0.5):
                continue
            if not batch:
                batch = self._take()
            else:  # a retried batch: drop what got lost meanwhile
                batch = [i for i in batch if i[0] is None or not i[0].lost]
            if not batch:
                continue
            try:
                await self._publisher.publish_many([item[1] for item in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled(exc)
                self.publisher_ok = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.failed_batches += 1
                self._notify_failed(len(batch), exc)
                retryable = not isinstance(exc, WsmError) or exc.retryable
                if self.retry and retryable:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                _warn("%s outbox dropped %d events: %s", self.name, len(batch), self.last_error)
                self.dropped += len(batch)
                batch = []
                continue
            backoff = 0.05
            self.publisher_ok = True
            self.published += len(batch)
            if self._on_published is not None:
                try:
                    self._on_published(len(batch), time.monotonic() - batch[0][2])
                except Exception:  # metrics must never stop publishing
                    pass
            batch = []

    def _notify_failed(self, count: int, exc: BaseException) -> None:
        if self._on_failed is not None:
            try:
                self._on_failed(count, exc)
            except Exception:
                pass

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been handed over (True) or ``timeout`` passed."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False


def _warn(message: str, *args: object) -> None:
    try:
        log.warning(message, *args)
    except Exception:  # logging is fire-and-forget
        pass
