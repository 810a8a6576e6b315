"""In-process publisher: the embedded default of ``wsm serve``, watchable with ``wsm tail``.

Publishing never blocks and never fails because of a subscriber: each subscriber has its own
bounded queue, and a subscriber that falls behind loses its *oldest* events. It is told so: the
next event it reads is an overflow notice (type :data:`OVERFLOW_TYPE`, JSON data
``{"dropped": n}``) on the topic it subscribed to, and :attr:`Subscription.dropped` counts the
total. Within a topic, subscribers see events in publish order.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Sequence
from types import TracebackType

from wsmanager.core.errors import InvalidArgument, Unavailable
from wsmanager.ports import Message

__all__ = ["ALL_TOPICS", "OVERFLOW_TYPE", "InProcessPublisher", "Subscription"]

#: Subscribe to this to see every topic (``wsm tail '*'``).
ALL_TOPICS = "*"
OVERFLOW_TYPE = "com.virtufin.websocketmanager.subscription.overflow"


class Subscription:
    """An async iterator over one topic's events, registered from the moment it is created
    (so a test may subscribe, then act, then read). Ends when closed or when the publisher
    closes. Use ``async with`` or :meth:`aclose` to unsubscribe."""

    def __init__(self, hub: InProcessPublisher, topic: str, maxsize: int) -> None:
        self.topic = topic
        self.maxsize = maxsize
        #: Events this subscriber lost because it fell behind (oldest first).
        self.dropped = 0
        self._hub = hub
        self._queue: deque[Message] = deque()
        self._unreported = 0
        self._ready = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        return f"Subscription(topic={self.topic!r}, queued={len(self._queue)})"

    def _offer(self, message: Message) -> None:
        if len(self._queue) >= self.maxsize:
            self._queue.popleft()
            self.dropped += 1
            self._unreported += 1
        self._queue.append(message)
        self._ready.set()

    def _end(self) -> None:
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        while not self._queue and not self._unreported:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        if self._unreported:
            lost, self._unreported = self._unreported, 0
            return Message(
                self.topic,
                json.dumps({"dropped": lost}).encode(),
                "application/json",
                {"specversion": "1.0", "type": OVERFLOW_TYPE, "source": "urn:wsmanager:inproc"},
            )
        return self._queue.popleft()

    def pending(self) -> int:
        """Events queued and not yet read."""
        return len(self._queue)

    async def aclose(self) -> None:
        self._hub._unsubscribe(self)
        self._end()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class InProcessPublisher:
    """The :class:`~wsmanager.ports.Publisher` port within one process, plus ``subscribe``.

    Args:
        queue_size: per-subscriber bound; a slower subscriber loses its oldest events.
    """

    def __init__(self, *, queue_size: int = 10_000) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise InvalidArgument("queue_size must be a positive integer")
        self.queue_size = queue_size
        #: Events accepted since creation (for tests and ``/metrics``).
        self.published = 0
        self._subscribers: dict[str, list[Subscription]] = {}
        self._closed = False

    def __repr__(self) -> str:
        count = sum(len(s) for s in self._subscribers.values())
        return f"InProcessPublisher(subscribers={count}, queue_size={self.queue_size})"

    def subscribe(self, topic: str, *, queue_size: int | None = None) -> Subscription:
        """Watch ``topic`` (or :data:`ALL_TOPICS`) from now on.

        Raises:
            Unavailable: the publisher is closed.
        """
        if self._closed:
            raise Unavailable("the in-process publisher is closed")
        sub = Subscription(self, topic, queue_size or self.queue_size)
        self._subscribers.setdefault(topic, []).append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.topic)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subscribers[sub.topic]

    async def publish(self, message: Message) -> None:
        await self.publish_many((message,))

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Hand every message to the topic's subscribers, in order. Never blocks.

        Raises:
            Unavailable: the publisher is closed.
        """
        if self._closed:
            raise Unavailable("the in-process publisher is closed")
        everyone = self._subscribers.get(ALL_TOPICS, ())
        subscribers = self._subscribers
        for message in messages:
            for sub in subscribers.get(message.topic, ()):
                sub._offer(message)
            if everyone and message.topic != ALL_TOPICS:
                for sub in everyone:
                    sub._offer(message)
        self.published += len(messages)

    async def close(self) -> None:
        """Refuse further publishes and end every subscription (readers finish their queue)."""
        self._closed = True
        for subs in list(self._subscribers.values()):
            for sub in subs:
                sub._end()
        self._subscribers.clear()
