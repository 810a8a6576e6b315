"""Redis Streams publisher: one stream per topic, each event one entry, Dapr's entry layout.

Entry layout: a single field ``data`` holding the event as a structured-mode CloudEvent (JSON),
which is what Dapr's ``pubsub.redis`` component writes and reads, so Dapr subscribers on the same
Redis consume our streams unchanged. The payload is ``data`` as a UTF-8 string for text content
types (the reference's "data is the payload decoded as UTF-8") and ``data_base64`` otherwise.

Throughput (brief §7: ≥ 50,000 inbound frames/s on one holder): redis-py spends far more time per
*command* than per *argument*, so :meth:`RedisStreamPublisher.publish_many` sends one command per
topic per batch: a small Lua script that runs the ``XADD`` s server-side, in order. One script
call touches one stream key, so it also works on Redis Cluster. Streams are capped with
``MAXLEN ~`` (approximate trimming is O(1) amortised).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from wsmanager.adapters.redis import redis_from_url
from wsmanager.core.errors import InvalidArgument, Unavailable
from wsmanager.core.framing import is_text_content_type
from wsmanager.core.validation import redact_url
from wsmanager.ports import Message

__all__ = ["RedisStreamPublisher", "encode_event"]

# ARGV[1] = MAXLEN ("0": no cap), ARGV[2..] = entries; every entry goes to KEYS[1], in order.
_XADD_MANY = """
local cap = ARGV[1]
for i = 2, #ARGV do
  if cap ~= '0' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'data', ARGV[i])
  else
    redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
  end
end
return #ARGV - 1
"""
#: Entries per script call: bounds the time Redis spends in one script (~1-2 ms).
_CHUNK = 2000
# ASCII output (non-ASCII as \u escapes): valid JSON for any input, and the cheapest to encode.
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_DEFAULTS = {
    "specversion": "1.0",
    "source": "urn:wsmanager",
    "type": "com.virtufin.websocketmanager.event",
}


def encode_event(message: Message) -> bytes:
    """A message as a structured-mode CloudEvent JSON document (CloudEvents 1.0 JSON format)."""
    event: dict[str, Any] = dict(message.attributes)
    for name, value in _DEFAULTS.items():
        if name not in event:
            event[name] = value
    if "id" not in event:
        event["id"] = uuid.uuid4().hex
    event["datacontenttype"] = message.content_type
    if _is_text(message.content_type):
        event["data"] = message.data.decode("utf-8", errors="replace")
    else:
        event["data_base64"] = base64.b64encode(message.data).decode("ascii")
    return _dumps(event).encode("ascii")


def _is_text(content_type: str) -> bool:
    try:
        return is_text_content_type(content_type)
    except InvalidArgument:
        return False


class RedisStreamPublisher:
    """The :class:`~wsmanager.ports.Publisher` port on Redis Streams (module doc).

    Args:
        client_or_url: a ``redis://`` / ``rediss://`` URL (the publisher makes the client and
            closes it in :meth:`close`) or a ``redis.asyncio.Redis`` the caller owns.
        maxlen: approximate cap per stream; ``None`` or 0 keeps everything.
        key_prefix: prepended to the topic to name the stream (tests namespace with it).
        socket_timeout: seconds before a silent Redis counts as unreachable.
    """

    def __init__(
        self,
        client_or_url: str | Redis,
        *,
        maxlen: int | None = 100_000,
        key_prefix: str = "",
        socket_timeout: float = 5.0,
    ) -> None:
        if maxlen is not None and (isinstance(maxlen, bool) or maxlen < 0):
            raise InvalidArgument("maxlen must be a non-negative integer or None")
        if not isinstance(key_prefix, str):
            raise InvalidArgument("key_prefix must be a string")
        self.maxlen = maxlen or 0
        self.key_prefix = key_prefix
        if isinstance(client_or_url, str):
            self._where = f"url={redact_url(client_or_url)!r}"
            self._client: Redis = redis_from_url(client_or_url, socket_timeout=socket_timeout)
            self._owns_client = True
        elif isinstance(client_or_url, Redis):
            self._where = "client"
            self._client = client_or_url
            self._owns_client = False
        else:
            raise InvalidArgument("RedisStreamPublisher needs a Redis URL or a redis.asyncio.Redis")
        self._script = self._client.register_script(_XADD_MANY)

    def __repr__(self) -> str:
        return (
            f"RedisStreamPublisher({self._where}, maxlen={self.maxlen}, prefix={self.key_prefix!r})"
        )

    def stream_key(self, topic: str) -> str:
        return self.key_prefix + topic

    async def publish(self, message: Message) -> None:
        await self.publish_many((message,))

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Append every message to its topic's stream; order is kept within each topic.

        Raises:
            Unavailable: Redis failed; the entries of topics not yet written are not written
                (a retry may duplicate the ones that were: consumers dedupe on ``id``, R9).
        """
        by_topic: dict[str, list[bytes]] = {}
        for message in messages:
            by_topic.setdefault(message.topic, []).append(encode_event(message))
        try:
            for topic, entries in by_topic.items():
                key = self.stream_key(topic)
                for start in range(0, len(entries), _CHUNK):
                    args: list[Any] = [self.maxlen, *entries[start : start + _CHUNK]]
                    await self._script(keys=[key], args=args)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis Streams publish failed ({type(exc).__name__})") from exc

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless Redis answers."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable ({type(exc).__name__})") from exc

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
