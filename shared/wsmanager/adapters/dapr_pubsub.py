"""Dapr pub/sub: the Publisher port over the SDK's ``publish_event`` and bulk ``publish_events``.

Each message goes out as a structured CloudEvent (``application/cloudevents+json``), which daprd
passes through, adding only its own fields (topic, pubsubname, trace ids): that is the one way
extension attributes (``websocketid``, ``websocketurl``, owner, fencing token, sequence; brief
§5, R9) reach subscribers. The event's ``id``/``source``/``type`` also travel as
``cloudevent.*`` metadata, the form daprd applies when it wraps a payload itself.

Bulk publish answers per entry. Failed entries are sent once more and any still failing raise
:class:`~wsmanager.core.errors.Unavailable` naming how many: nothing is dropped silently.
Delivery is at least once, and a re-sent entry lands after the rest of its batch, so consumers
order and de-duplicate by R9's sequence number.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from wsmanager.adapters.dapr_state import SidecarComponent, rpc_status
from wsmanager.adapters.resilience import Resilience, guarded_call
from wsmanager.core.errors import Internal, InvalidArgument, Unavailable
from wsmanager.ports import Message, Publisher

__all__ = ["BatchingPublisher", "DaprPublisher", "to_cloudevent"]

T = TypeVar("T")
CLOUDEVENT_JSON: Final = "application/cloudevents+json"
_RESERVED = frozenset({"specversion", "data", "data_base64", "datacontenttype"})


def to_cloudevent(message: Message, *, source: str, type_: str) -> tuple[bytes, dict[str, str]]:
    """The structured CloudEvent for ``message`` and the ``cloudevent.*`` metadata to send."""
    attrs = dict(message.attributes)
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": attrs.pop("id", "") or str(uuid.uuid4()),
        "source": attrs.pop("source", "") or source,
        "type": attrs.pop("type", "") or type_,
        "datacontenttype": message.content_type,
    }
    event.update((k, v) for k, v in attrs.items() if k not in _RESERVED)
    ctype = message.content_type.split(";")[0].strip().lower()
    try:
        if ctype == "application/json" or ctype.endswith("+json"):
            event["data"] = json.loads(message.data)
        elif ctype.startswith("text/"):
            event["data"] = message.data.decode("utf-8")
        else:
            raise ValueError("binary")
    except ValueError:  # binary, or text/JSON that is not: carried as bytes (CloudEvents JSON)
        event["data_base64"] = base64.b64encode(message.data).decode("ascii")
    metadata = {f"cloudevent.{name}": event[name] for name in ("id", "source", "type")}
    return json.dumps(event, separators=(",", ":")).encode(), metadata


class DaprPublisher(SidecarComponent):
    """Publisher over a Dapr pub/sub component (``pubsubName``)."""

    def __init__(
        self,
        pubsub_name: str = "pubsub",
        *,
        client: Any = None,
        address: str | None = None,
        source: str = "wsmanager",
        default_type: str = "com.virtufin.websocketmanager.message",
        max_batch: int = 100,
        call_timeout: float = 5.0,
        resilience: Resilience | None = None,
    ) -> None:
        if not isinstance(pubsub_name, str) or not pubsub_name.strip():
            raise InvalidArgument("pubsub_name must be a non-empty string")
        if max_batch < 1 or call_timeout <= 0:
            raise InvalidArgument("max_batch must be >= 1 and call_timeout > 0")
        self._pubsub = pubsub_name
        super().__init__(
            client=client, address=address, call_timeout=call_timeout, resilience=resilience
        )
        self._source = source
        self._type = default_type
        self._max_batch = max_batch

    def __repr__(self) -> str:
        return f"DaprPublisher({self._pubsub!r})"

    async def publish(self, message: Message) -> None:
        data, metadata = to_cloudevent(message, source=self._source, type_=self._type)
        await self._call(
            lambda c: c.publish_event(
                self._pubsub,
                message.topic,
                data,
                publish_metadata=metadata,
                data_content_type=CLOUDEVENT_JSON,
            )
        )

    async def publish_many(self, messages: Sequence[Message]) -> None:
        by_topic: dict[str, list[Message]] = {}
        for message in messages:
            by_topic.setdefault(message.topic, []).append(message)
        if by_topic and not hasattr(self._client, "publish_events"):  # SDK without bulk publish
            for message in messages:
                await self.publish(message)
            return
        for topic, batch in by_topic.items():
            for start in range(0, len(batch), self._max_batch):
                await self._publish_bulk(topic, batch[start : start + self._max_batch])

    async def _publish_bulk(self, topic: str, batch: Sequence[Message]) -> None:
        from dapr.clients import BulkPublishEntry

        entries = {}
        for message in batch:
            data, metadata = to_cloudevent(message, source=self._source, type_=self._type)
            entry_id = str(uuid.uuid4())
            entries[entry_id] = BulkPublishEntry(data, metadata, CLOUDEVENT_JSON, entry_id)
        errors: list[str] = []
        for _ in range(2):  # the batch, then its failed entries once more
            resp = await self._bulk(topic, list(entries.values()))
            failed = {e.entry_id for e in resp.failed_entries}
            errors = [e.error for e in resp.failed_entries]
            entries = {k: v for k, v in entries.items() if k in failed}
            if not entries:
                return
        raise Unavailable(
            f"{len(entries)} of {len(batch)} events failed to publish to {topic!r} "
            f"after a retry: {errors[0] if errors else 'no reason given'}",
            topic=topic,
            failed=len(entries),
        )

    async def _bulk(self, topic: str, entries: list[Any]) -> Any:
        return await self._call(lambda c: c.publish_events(self._pubsub, topic, entries))

    async def _call(self, request: Callable[[Any], Awaitable[T]]) -> T:
        client = self._client
        if client is None:
            raise Internal(f"{self!r} used before open()")
        return await guarded_call(
            self._resilience, lambda: request(client), timeout=self._timeout, map_error=self._error
        )

    def _error(self, exc: Exception) -> Unavailable:
        code, text = rpc_status(exc)
        if isinstance(exc, TimeoutError):
            text = f"no answer in {self._timeout} s"
        return Unavailable(f"Dapr pub/sub {self._pubsub!r}: {code or 'error'}: {text}")


class BatchingPublisher:
    """Coalesces concurrent ``publish`` calls into ``publish_many`` batches.

    A batch goes out when it holds ``max_batch`` messages or ``max_delay`` seconds after its
    first; batches go out one at a time, in order. Every caller awaits its batch's outcome, so a
    failure reaches each of them rather than being dropped.
    """

    def __init__(self, inner: Publisher, *, max_batch: int = 100, max_delay: float = 0.005) -> None:
        if max_batch < 1 or max_delay < 0:
            raise InvalidArgument("max_batch must be >= 1 and max_delay >= 0")
        self._inner, self._max_batch, self._max_delay = inner, max_batch, max_delay
        self._pending: list[tuple[Message, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"BatchingPublisher({self._inner!r}, max_batch={self._max_batch})"

    async def publish(self, message: Message) -> None:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((message, done))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay, self._flush)
        await done

    async def publish_many(self, messages: Sequence[Message]) -> None:
        self._flush()  # what was queued first goes first
        await asyncio.gather(*self._sending, return_exceptions=True)  # (its callers see errors)
        async with self._lock:
            await self._inner.publish_many(messages)

    async def close(self) -> None:
        self._flush()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._inner.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Message, asyncio.Future[None]]]) -> None:
        async with self._lock:
            try:
                await self._inner.publish_many([message for message, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                return
        for _, done in batch:
            if not done.done():
                done.set_result(None)
