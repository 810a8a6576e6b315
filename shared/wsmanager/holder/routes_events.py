"""``GET /v1/topics/{topic}/events``: stream a topic's events as NDJSON (what ``wsm tail`` reads).

Only a publisher that can be watched in process (:class:`~wsmanager.ports.Subscribable`, the
``inproc://`` one of ``wsm serve``) supports it; a broker-backed holder answers
FAILED_PRECONDITION and the broker's own tools are the way to watch its topics.

One JSON object per line, each with a ``type``:

* ``subscribed`` first, once the subscription is registered: a client that has read it will
  see every event published afterwards;
* ``message`` per event: ``topic``, ``content_type``, ``attributes`` (the CloudEvent attributes),
  ``data`` (UTF-8 text for text content types, else base64) and ``encoding`` (``utf-8`` or
  ``base64``);
* ``overflow`` with ``dropped``: this reader fell behind and lost that many older events;
* ``keepalive`` every :data:`KEEPALIVE_SECONDS` without events, so a client that went away is
  noticed (the write fails) and its subscription released.

The stream ends after ``?limit=N`` messages, when the client goes away, or at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from wsmanager.adapters.inproc import OVERFLOW_TYPE
from wsmanager.core.errors import FailedPrecondition, InvalidArgument
from wsmanager.core.framing import is_text_content_type
from wsmanager.core.validation import validate_topic
from wsmanager.holder.routes_common import HOLDER, RouteSpec
from wsmanager.ports import Message, Subscribable

__all__ = ["KEEPALIVE_SECONDS", "ROUTES", "message_line"]

KEEPALIVE_SECONDS = 15.0
NDJSON = "application/x-ndjson"


def _encoded(message: Message) -> tuple[str, str]:
    try:
        if is_text_content_type(message.content_type):
            return message.data.decode("utf-8"), "utf-8"
    except (InvalidArgument, UnicodeDecodeError):
        pass  # an odd content type or non-UTF-8 text is shown as base64, never dropped
    return base64.b64encode(message.data).decode("ascii"), "base64"


def message_line(message: Message) -> bytes:
    """One NDJSON line for an event (or for the publisher's overflow notice)."""
    if message.attributes.get("type") == OVERFLOW_TYPE:
        try:
            dropped = int(json.loads(message.data)["dropped"])
        except (ValueError, KeyError, TypeError):
            dropped = 0
        return _line({"type": "overflow", "topic": message.topic, "dropped": dropped})
    data, encoding = _encoded(message)
    line: dict[str, Any] = {
        "type": "message",
        "topic": message.topic,
        "content_type": message.content_type,
        "attributes": dict(message.attributes),
        "data": data,
        "encoding": encoding,
    }
    return _line(line)


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _line(obj: dict[str, Any]) -> bytes:
    return _encode(obj).encode() + b"\n"


def _limit(request: web.Request) -> int | None:
    raw = request.query.get("limit")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise InvalidArgument("limit must be an integer from 1 to 1000000")
    return int(raw)


async def tail(request: web.Request) -> web.StreamResponse:
    state = request.app[HOLDER]
    topic = validate_topic(request.match_info["topic"])
    limit = _limit(request)
    unknown = set(request.query) - {"limit"}
    if unknown:
        raise InvalidArgument(f"unknown query parameter {sorted(unknown)[0][:40]!r}")
    publisher = state.publisher
    if not isinstance(publisher, Subscribable):
        raise FailedPrecondition(
            "this holder publishes to a broker; watch the topic with the broker's tools "
            "(tail works with WSM_PUBSUB_URL=inproc://, the default of wsm serve)"
        )
    iterator = aiter(publisher.subscribe(topic))
    pending: asyncio.Future[Message] = asyncio.ensure_future(anext(iterator))
    # Let the subscription register (an async generator runs up to its first wait) before the
    # client is told it is live.
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(state.stopping.wait())
    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    try:
        await response.prepare(request)
        await response.write(_line({"type": "subscribed", "topic": topic}))
        await _pump(response, iterator, pending, stopping, limit)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    except ConnectionError:
        pass  # the client went away: nothing to answer
    finally:
        stopping.cancel()
        if not pending.done():  # prepare failed before the pump took the first wait over
            pending.cancel()
        await _close(iterator)
    return response


async def _pump(
    response: web.StreamResponse,
    iterator: AsyncIterator[Message],
    pending: asyncio.Future[Message],
    stopping: asyncio.Future[Any],
    limit: int | None,
) -> None:
    sent = 0
    try:
        while limit is None or sent < limit:
            done, _ = await asyncio.wait(
                {pending, stopping}, timeout=KEEPALIVE_SECONDS, return_when="FIRST_COMPLETED"
            )
            if stopping in done:
                return
            if pending not in done:
                await response.write(_line({"type": "keepalive"}))
                continue
            try:
                message = pending.result()
            except StopAsyncIteration:
                return
            await response.write(message_line(message))
            sent += 1
            pending = asyncio.ensure_future(anext(iterator))
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending


async def _close(iterator: AsyncIterator[Message]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "GET", "/v1/topics/{topic}/events", tail, "TailTopic",
        "Stream a topic's events as NDJSON (in-process publisher only)",
        errors=("FAILED_PRECONDITION",), media_type=NDJSON,
        query={"limit": "End the stream after this many messages (1-1000000)"},
    ),
)  # fmt: skip
