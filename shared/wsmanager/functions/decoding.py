"""Turning one HTTP request into one command: CloudEvents (binary or structured mode, as Knative
delivers them) or a plain JSON call.

Mode detection follows the CloudEvents HTTP binding: a ``ce-specversion`` header means binary
mode; ``Content-Type: application/cloudevents+json`` means structured mode; anything else is a
plain HTTP call. Required attributes are checked here first so that a malformed event is refused
with a message naming what is missing (the SDK's own messages quote the whole body); the
cloudevents SDK then parses the event.

Everything here is a pure function of the request: a refusal changes nothing anywhere.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents.exceptions import GenericException as CloudEventError
from cloudevents.http import from_http
from pydantic import BaseModel

from wsmanager.core.errors import InvalidArgument, InvalidEvent, MethodNotAllowed
from wsmanager.core.validation import trace_id, usable_correlation_id
from wsmanager.functions.commands import COMMANDS, FUNCTIONS, Command, parse_data

__all__ = [
    "CORRELATION_HEADER",
    "IDEMPOTENCY_HEADER",
    "Incoming",
    "Invocation",
    "MethodNotAllowed",
    "Mode",
    "decode",
    "detect_mode",
    "peek",
]

CORRELATION_HEADER = "x-correlation-id"
#: Plain-HTTP callers opt in to deduplication with this header (CloudEvents use source + id).
IDEMPOTENCY_HEADER = "idempotency-key"
_STRUCTURED = "application/cloudevents+json"
_BATCH = "application/cloudevents-batch+json"
_REQUIRED = ("specversion", "id", "source", "type")
_SPECVERSIONS = ("1.0", "0.3")


class Mode(enum.Enum):
    BINARY = "binary"
    STRUCTURED = "structured"
    JSON = "json"

    @property
    def is_event(self) -> bool:
        return self is not Mode.JSON


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request, framework-free. ``headers`` keys are lower-case."""

    method: str
    headers: Mapping[str, str]
    body: bytes
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        method: str,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes,
        query: tuple[tuple[str, str], ...] = (),
    ) -> Incoming:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        merged: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        return cls(method.upper(), merged, body, query)


@dataclass(frozen=True, slots=True)
class Invocation:
    """A decoded request: which command, its validated data, and who asked."""

    function: str
    mode: Mode
    command: Command
    data: BaseModel
    correlation_id: str
    #: ``(source, id)`` that identifies a redelivery, or ``None`` (no deduplication).
    identity: tuple[str, str] | None
    #: Hash of command + data: a reused event id with other data is refused, not replayed.
    fingerprint: str

    @property
    def connection_id(self) -> str | None:
        value = getattr(self.data, "id", None)
        return value if isinstance(value, str) else None


def detect_mode(headers: Mapping[str, str]) -> Mode:
    if "ce-specversion" in headers:
        return Mode.BINARY
    if _media(headers.get("content-type", "")) in (_STRUCTURED, _BATCH):
        return Mode.STRUCTURED
    return Mode.JSON


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json_media(content_type: str | None) -> bool:
    media = _media(content_type or "application/json")
    return media == "application/json" or media.endswith("+json")


def correlation_of(event_id: str | None, headers: Mapping[str, str]) -> str:
    """The correlation id carried to the holder: the CloudEvent id, else ``X-Correlation-Id``,
    else the W3C trace id, else a new one. Unusable values are hashed, not dropped, so the
    same event always gets the same correlation id."""
    for given in (event_id, headers.get(CORRELATION_HEADER)):
        if given:
            usable = usable_correlation_id(given)
            if usable is not None:
                return usable
            # Hashed into the holder's accepted shape, so one event keeps one correlation id.
            return hashlib.sha256(given.strip().encode("utf-8", "replace")).hexdigest()[:32]
    return trace_id(headers.get("traceparent")) or uuid.uuid4().hex


def _strict_json(raw: bytes, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InvalidEvent(f"{what} has the key {key[:40]!r} twice")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise InvalidEvent(f"{what} is not valid JSON ({name} is not JSON)")

    try:
        return json.loads(raw, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except InvalidEvent:
        raise
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent(f"{what} is not valid JSON") from None
    except RecursionError:
        raise InvalidEvent(f"{what} is nested too deeply") from None


def _check_attributes(mode: Mode, headers: Mapping[str, str], body: bytes) -> None:
    """Name what is missing before the SDK sees the event (its messages quote the body)."""
    if mode is Mode.BINARY:
        missing = [f"ce-{a}" for a in _REQUIRED if not headers.get(f"ce-{a}", "").strip()]
        if missing:
            raise InvalidEvent(f"binary-mode CloudEvent lacks the header(s) {', '.join(missing)}")
        _check_specversion(headers["ce-specversion"])
        return
    if _media(headers.get("content-type", "")) == _BATCH:
        raise InvalidEvent("batched CloudEvents are not supported; send one event per request")
    envelope = _strict_json(body, "structured-mode CloudEvent")
    if not isinstance(envelope, dict):
        raise InvalidEvent("a structured-mode CloudEvent must be a JSON object")
    missing = [a for a in _REQUIRED if not isinstance(envelope.get(a), str) or not envelope[a]]
    if missing:
        raise InvalidEvent(f"CloudEvent lacks the attribute(s) {', '.join(missing)}")
    _check_specversion(envelope["specversion"])
    if "data_base64" in envelope:
        raise InvalidEvent("CloudEvent data must be JSON (data_base64 is not accepted)")


def _check_specversion(version: str) -> None:
    if version.strip() not in _SPECVERSIONS:
        raise InvalidEvent(
            f"unsupported CloudEvents specversion {version[:20]!r} "
            f"(supported: {', '.join(_SPECVERSIONS)})"
        )


def _command_for(function: str, event_type: str) -> Command:
    accepted = sorted({c.event_type for c in COMMANDS.values() if c.function == function})
    command = COMMANDS.get(event_type)
    if command is None or command.function != function:
        raise InvalidEvent(
            f"event type {event_type[:200]!r} is not handled by the {function} function "
            f"(accepts: {', '.join(accepted)})"
        )
    return command


def _event_data(command: Command, event: Any) -> dict[str, Any]:
    if command.model.model_config.get("extra") == "ignore":
        return {}  # reclaim: a PingSource payload is free-form and carries no options
    data = event.data
    if data is None:
        return {}
    # The SDK parses data as JSON whatever the declared type (clients often send binary-mode
    # events as application/octet-stream); what counts is that it is a JSON object.
    if not isinstance(data, dict):
        declared = event.get("datacontenttype")
        hint = "" if _is_json_media(declared) else f" (datacontenttype {str(declared)[:60]!r})"
        raise InvalidEvent(f"CloudEvent data must be a JSON object{hint}")
    return data


def _decode_event(function: str, mode: Mode, incoming: Incoming) -> Invocation:
    _check_attributes(mode, incoming.headers, incoming.body)
    try:
        event = from_http(dict(incoming.headers), incoming.body)
    except CloudEventError as exc:
        # The SDK's messages may quote the whole body: keep the start only.
        raise InvalidEvent(f"malformed CloudEvent: {str(exc)[:200]}") from None
    command = _command_for(function, str(event["type"]))
    data = _event_data(command, event)
    parsed = parse_data(command, data)
    source, event_id = str(event["source"]), str(event["id"])
    return Invocation(
        function=function,
        mode=mode,
        command=command,
        data=parsed,
        correlation_id=correlation_of(event_id, incoming.headers),
        identity=(source, event_id),
        fingerprint=_fingerprint(command, parsed),
    )


def _plain_data(incoming: Incoming) -> dict[str, Any]:
    if incoming.body.strip():
        if not _is_json_media(incoming.headers.get("content-type")):
            raise InvalidArgument("Content-Type must be application/json (or a CloudEvent)")
        data = _strict_json(incoming.body, "request body")
        if not isinstance(data, dict):
            raise InvalidArgument("request body must be a JSON object")
        return data
    query: dict[str, Any] = {}
    for key, value in incoming.query:
        if key in query:
            raise InvalidArgument(f"query parameter {key[:40]!r} is given twice")
        query[key] = value
    return query


def _decode_plain(function: str, incoming: Incoming) -> Invocation:
    by_method = FUNCTIONS[function]
    commands = by_method.get(incoming.method)
    if commands is None:
        allowed = ", ".join(sorted(by_method))
        raise MethodNotAllowed(f"the {function} function answers {allowed}, not {incoming.method}")
    data = _plain_data(incoming)
    if function == "list":
        # Get when an id is named; otherwise List, with the rest of the query as tag filters.
        if "id" in data:
            command = commands[0]
        else:
            command = commands[1]
            if incoming.method == "GET" and data:
                data = {"tags": data}
    else:
        command = commands[0]
    parsed = parse_data(command, data)
    key = incoming.headers.get(IDEMPOTENCY_HEADER, "").strip()
    return Invocation(
        function=function,
        mode=Mode.JSON,
        command=command,
        data=parsed,
        correlation_id=correlation_of(None, incoming.headers),
        identity=(f"http:{function}", key) if key else None,
        fingerprint=_fingerprint(command, parsed),
    )


def _fingerprint(command: Command, data: BaseModel) -> str:
    canonical = json.dumps(
        [command.name, data.model_dump(exclude_none=True)], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def peek(function: str, incoming: Incoming) -> tuple[str, tuple[str, str] | None]:
    """Best effort, never raises: the command name and ``(source, id)`` of a request that may
    not decode, so even the error reply to a malformed event names what it can."""
    attrs: Mapping[str, Any] = {}
    mode = detect_mode(incoming.headers)
    if mode is Mode.BINARY:
        attrs = {a: incoming.headers.get(f"ce-{a}") for a in _REQUIRED}
    elif mode is Mode.STRUCTURED:
        try:
            envelope = json.loads(incoming.body)
        except (ValueError, RecursionError):
            envelope = None
        attrs = envelope if isinstance(envelope, dict) else {}
    command = COMMANDS.get(str(attrs.get("type")))
    name = command.name if command is not None and command.function == function else function
    source, event_id = attrs.get("source"), attrs.get("id")
    identity = (source, event_id) if isinstance(source, str) and isinstance(event_id, str) else None
    return name, identity


def decode(function: str, incoming: Incoming) -> Invocation:
    """Decode ``incoming`` for ``function`` (a folder name under ``functions/``).

    Raises:
        InvalidEvent: a malformed CloudEvent, or one of a type this function does not serve.
        InvalidArgument: a plain call with a bad body or data (the message names the field).
        MethodNotAllowed: a plain call with a method the function does not serve.
    """
    if function not in FUNCTIONS:
        raise InvalidArgument(f"unknown function {function!r}")
    mode = detect_mode(incoming.headers)
    if mode.is_event:
        if incoming.method != "POST":
            raise MethodNotAllowed("CloudEvents are delivered with POST")
        return _decode_event(function, mode, incoming)
    return _decode_plain(function, incoming)
