"""CloudEvents the holder publishes, as :class:`~wsmanager.ports.Message` values.

Two kinds (brief §5, reference §4):

* **Inbound frames** on the connection's topic: ``data`` is the frame payload, the CloudEvent
  extension attributes are ``websocketid``, ``websocketurl`` (credentials redacted),
  ``timestamp`` (ISO-8601 UTC receive time) and ``contenttype``, plus the R9 attributes
  ``ownerinstance``, ``ownerincarnation``, ``fencingtoken`` and ``sequence`` so consumers can
  drop what a deposed owner publishes (order by ``(fencingtoken, sequence)``). The event ``id``
  is ``<connection id>:<fencing token>:<sequence>``: unique, and equal for duplicates.
* **Lifecycle events** on ``websocketmanager.lifecycle``, type
  ``com.virtufin.websocketmanager.lifecycle.<kind>``, JSON data with ``connection_id``, ``url``
  (redacted), ``instance_id``, ``reason`` (the previous status), ``attempt`` (reconnecting) or
  ``error_type``/``error_message`` (error).

Inbound events are built on the hot path (one per frame), so the per-connection constant part
of the attributes is computed once (:class:`InboundTemplate`) and only the varying part per
frame.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from wsmanager.core.model import ConnectionStatus, Owner
from wsmanager.core.validation import redact_url
from wsmanager.ports import Message

__all__ = [
    "INBOUND_TYPE",
    "LIFECYCLE_KINDS",
    "LIFECYCLE_PREFIX",
    "LIFECYCLE_TOPIC",
    "STATUS_EVENTS",
    "InboundTemplate",
    "iso_utc",
    "lifecycle_event",
    "source_of",
]

LIFECYCLE_TOPIC: Final = "websocketmanager.lifecycle"
LIFECYCLE_PREFIX: Final = "com.virtufin.websocketmanager.lifecycle."
LIFECYCLE_KINDS: Final = frozenset(
    {"connecting", "connected", "reconnecting", "disconnected", "error", "reclaimed"}
)
INBOUND_TYPE: Final = "com.virtufin.websocketmanager.message.received"

#: Lifecycle kind announced when a connection enters a status (reference §4.2).
STATUS_EVENTS: Final[Mapping[ConnectionStatus, str]] = {
    ConnectionStatus.CONNECTING: "connecting",
    ConnectionStatus.CONNECTED: "connected",
    ConnectionStatus.RECONNECTING: "reconnecting",
    ConnectionStatus.DISCONNECTED: "disconnected",
}


_second_cache: list[Any] = [None, ""]  # [whole second, its "YYYY-MM-DDTHH:MM:SS" text]


def iso_utc(ts: float) -> str:
    """Seconds since the epoch as ISO-8601 UTC with microseconds and a ``Z``.

    Called once per published frame: the date-and-time part is formatted once per second and
    reused (formatting a datetime costs more than the rest of the event).
    """
    whole = math.floor(ts)
    micros = int((ts - whole) * 1_000_000)
    cache = _second_cache
    if cache[0] != whole:
        cache[1] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cache[0] = whole
    return f"{cache[1]}.{micros:06d}Z"


def source_of(owner: Owner) -> str:
    """The CloudEvent ``source`` of everything one holder publishes (its URN)."""
    return f"urn:wsmanager:instance:{owner.instance_id}"


class InboundTemplate:
    """Builds the inbound-frame events of one connection at one fencing token (R9).

    Rebuilt whenever the connection's topic, owner or token changes; the sequence number is
    the connection's and is passed in per frame.
    """

    __slots__ = ("topic", "_base", "_prefix", "_text_ct", "_binary_ct")

    def __init__(
        self,
        *,
        connection_id: str,
        url: str,
        topic: str,
        owner: Owner,
        fencing_token: int,
        text_content_type: str,
        binary_content_type: str,
    ) -> None:
        self.topic = topic
        self._prefix = f"{connection_id}:{fencing_token}:"
        self._text_ct = text_content_type
        self._binary_ct = binary_content_type
        self._base: dict[str, str] = {
            "specversion": "1.0",
            "type": INBOUND_TYPE,
            "source": source_of(owner),
            "websocketid": connection_id,
            "websocketurl": redact_url(url),
            "ownerinstance": owner.instance_id,
            "ownerincarnation": owner.incarnation,
            "fencingtoken": str(fencing_token),
        }

    def build(self, payload: bytes, is_text: bool, sequence: int, received_at: float) -> Message:
        """The event for one inbound frame (hot path: one dict copy, one timestamp format)."""
        content_type = self._text_ct if is_text else self._binary_ct
        stamp = iso_utc(received_at)
        attributes = self._base.copy()
        attributes["id"] = self._prefix + str(sequence)
        attributes["time"] = stamp
        attributes["timestamp"] = stamp
        attributes["contenttype"] = content_type
        attributes["sequence"] = str(sequence)
        return Message(self.topic, payload, content_type, attributes)


def lifecycle_event(
    kind: str,
    *,
    connection_id: str,
    url: str,
    owner: Owner,
    now: float,
    reason: str | None = None,
    fencing_token: int | None = None,
    **fields: Any,
) -> Message:
    """One lifecycle event (reference §4.2); the URL is redacted here, whatever the caller has.

    Raises:
        ValueError: an unknown kind (a bug, never caused by input).
    """
    if kind not in LIFECYCLE_KINDS:
        raise ValueError(f"unknown lifecycle event kind {kind!r}")
    data: dict[str, Any] = {
        "connection_id": connection_id,
        "url": redact_url(url),
        "instance_id": owner.instance_id,
    }
    if reason is not None:
        data["reason"] = reason
    if fencing_token is not None:
        data["fencing_token"] = fencing_token
    data.update(fields)
    attributes = {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "type": LIFECYCLE_PREFIX + kind,
        "source": source_of(owner),
        "subject": connection_id,
        "time": iso_utc(now),
        "websocketid": connection_id,
    }
    body = json.dumps(data, separators=(",", ":"), default=str).encode()
    return Message(LIFECYCLE_TOPIC, body, "application/json", attributes)
