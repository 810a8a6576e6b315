"""The function commands of brief §5 as data: event types, data models, and the holder call each
one becomes.

A command's data carries the REST request body's fields plus ``id`` for the connection it
addresses. Models are strict (no coercion, unknown fields refused) so a typo in a producer's
event is a clear 400 naming the field, never a silently ignored option. Checks that need more
than a type (tags, topic, URL shape, timeout range) reuse :mod:`wsmanager.core.validation`, so a
command refused here is refused with the holder's own words and before anything changes.

The URL is checked for shape only (ws/wss, a host, no fragment). Whether its host may be
reached (SSRF, ``AllowedTargetHosts``, DNS) is the holder's decision: one place owns the policy.

Types ``command.list``, ``command.get`` and ``command.tags.get`` are our additions (the brief
fixes no read commands); ``dev.knative.sources.ping`` triggers the reclaim function.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wsmanager.core.errors import InvalidArgument
from wsmanager.core.framing import media_type
from wsmanager.core.validation import (
    MAX_TIMEOUT_MS,
    MAX_URL,
    parse_tag_filters,
    validate_tag_key,
    validate_tag_value,
    validate_tags,
    validate_topic,
    validate_url,
)

__all__ = [
    "COMMANDS",
    "COMMAND_PREFIX",
    "ERROR_TYPE",
    "FUNCTIONS",
    "PING_TYPE",
    "RESULT_PREFIX",
    "Command",
    "HolderCall",
    "Route",
    "parse_data",
]

COMMAND_PREFIX = "com.virtufin.websocketmanager.command."
RESULT_PREFIX = "com.virtufin.websocketmanager.result."
ERROR_TYPE = "com.virtufin.websocketmanager.error"
PING_TYPE = "dev.knative.sources.ping"

#: Seconds a holder call may take beyond the command's own wait (a correlated Send's timeout).
CALL_SLACK = 5.0
DEFAULT_CALL_TIMEOUT = 15.0
#: Longest connection id accepted; ids the holder issues are 36-character UUIDs.
MAX_ID = 128


class Route(enum.Enum):
    """Where a command goes: a live holder chosen by load, the record's owner, or nowhere."""

    ANY = "any"
    OWNER = "owner"
    RECLAIM = "reclaim"


@dataclass(frozen=True, slots=True)
class HolderCall:
    """One request to a holder's REST API (path already percent-encoded)."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    query: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_CALL_TIMEOUT
    connection_id: str | None = None


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def body(self, *names: str) -> dict[str, Any]:
        """The named fields that were given (REST bodies omit what the caller omitted)."""
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _named(field: str, check: Callable[..., object], *args: Any) -> None:
    """Run a core check; its error names the field (core messages need not)."""
    try:
        check(*args)
    except InvalidArgument as exc:
        if exc.message.lower().startswith(field):
            raise
        raise InvalidArgument(f"{field}: {exc.message}") from None


def _check_id(value: str) -> None:
    if not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidArgument("id: must be printable and contain no whitespace")


def _check_content_type(value: str | None) -> None:
    if value is not None:
        _named("content_type", media_type, value)


def _seg(value: str) -> str:
    return quote(value, safe="")


class _Addressed(_Data):
    id: str = Field(min_length=1, max_length=MAX_ID)

    @model_validator(mode="after")
    def _id_ok(self) -> _Addressed:
        _check_id(self.id)
        return self

    @property
    def path(self) -> str:
        return f"/v1/connections/{_seg(self.id)}"


class ConnectData(_Data):
    url: str = Field(min_length=1, max_length=MAX_URL)
    auto_reconnect: bool | None = None
    tags: dict[str, str] | None = None
    content_type: str | None = Field(None, max_length=255)

    @model_validator(mode="after")
    def _semantics(self) -> ConnectData:
        _named("url", validate_url, self.url, ("*",))  # shape only: the holder owns the policy
        _named("tags", validate_tags, self.tags)
        _check_content_type(self.content_type)
        return self


class SendData(_Addressed):
    message: str
    content_type: str | None = Field(None, max_length=255)
    timeout_ms: int | None = Field(None, ge=1, le=MAX_TIMEOUT_MS)

    @model_validator(mode="after")
    def _semantics(self) -> SendData:
        _check_content_type(self.content_type)
        return self


class SendRawData(_Addressed):
    message: str
    content_type: str | None = Field(None, max_length=255)

    @model_validator(mode="after")
    def _semantics(self) -> SendRawData:
        _check_content_type(self.content_type)
        return self


class IdData(_Addressed):
    pass


class PublishData(_Addressed):
    topic: str

    @model_validator(mode="after")
    def _semantics(self) -> PublishData:
        _named("topic", validate_topic, self.topic)
        return self


class TagsSetData(_Addressed):
    """Either one tag (``key`` + ``value``) or all of them (``tags``, replacing the rest)."""

    key: str | None = None
    value: str | None = None
    tags: dict[str, str] | None = None

    @model_validator(mode="after")
    def _semantics(self) -> TagsSetData:
        if self.tags is not None:
            if self.key is not None or self.value is not None:
                raise InvalidArgument("give either tags, or key and value, not both")
            _named("tags", validate_tags, self.tags)
        elif self.key is None or self.value is None:
            raise InvalidArgument("key and value are required (or tags, to replace all tags)")
        else:
            _named("key", validate_tag_key, self.key)
            _named("value", validate_tag_value, self.key, self.value)
        return self


class TagsGetData(_Addressed):
    key: str | None = None

    @model_validator(mode="after")
    def _semantics(self) -> TagsGetData:
        if self.key is not None:
            _named("key", validate_tag_key, self.key)
        return self


class ListData(_Data):
    tags: dict[str, str] | None = None

    @model_validator(mode="after")
    def _semantics(self) -> ListData:
        _named("tags", parse_tag_filters, list((self.tags or {}).items()))
        return self


class NoData(_Data):
    """Reclaim takes no input: a PingSource's payload is whatever its author configured."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _timeout(data: SendData) -> float:
    wait = (data.timeout_ms or 0) / 1000.0
    return max(DEFAULT_CALL_TIMEOUT, wait + CALL_SLACK)


def _connect(d: ConnectData) -> HolderCall:
    return HolderCall(
        "POST", "/v1/connect", d.body("url", "auto_reconnect", "tags", "content_type")
    )


def _send(d: SendData) -> HolderCall:
    body = d.body("message", "content_type", "timeout_ms")
    return HolderCall("POST", d.path + "/send", body, timeout=_timeout(d), connection_id=d.id)


def _sendraw(d: SendRawData) -> HolderCall:
    body = d.body("message", "content_type")
    return HolderCall("POST", d.path + "/sendraw", body, connection_id=d.id)


def _disconnect(d: IdData) -> HolderCall:
    return HolderCall("DELETE", d.path, connection_id=d.id)


def _start(d: PublishData) -> HolderCall:
    return HolderCall("POST", d.path + "/publish", {"topic": d.topic}, connection_id=d.id)


def _stop(d: IdData) -> HolderCall:
    return HolderCall("DELETE", d.path + "/publish", connection_id=d.id)


def _tags_set(d: TagsSetData) -> HolderCall:
    if d.tags is not None:
        return HolderCall("PUT", d.path + "/tags", {"tags": d.tags}, connection_id=d.id)
    assert d.key is not None  # the model guarantees key + value without tags
    path = f"{d.path}/tags/{_seg(d.key)}"
    return HolderCall("POST", path, {"value": d.value}, connection_id=d.id)


def _tags_get(d: TagsGetData) -> HolderCall:
    path = d.path + "/tags" + ("" if d.key is None else f"/{_seg(d.key)}")
    return HolderCall("GET", path, connection_id=d.id)


def _list(d: ListData) -> HolderCall:
    return HolderCall("GET", "/v1/connections", query=tuple((d.tags or {}).items()))


def _get(d: IdData) -> HolderCall:
    return HolderCall("GET", d.path)


def _nothing(d: NoData) -> HolderCall:
    raise AssertionError("reclaim makes no holder call")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Command:
    """One command: its name (the event type's suffix), the function serving it, its data
    model, where it is routed, whether redeliveries are deduplicated, and its holder call."""

    name: str
    function: str
    model: type[_Data]
    route: Route
    dedupe: bool
    build: Callable[[Any], HolderCall]
    event_type: str = ""

    def __post_init__(self) -> None:
        if not self.event_type:
            object.__setattr__(self, "event_type", COMMAND_PREFIX + self.name)

    @property
    def result_type(self) -> str:
        return RESULT_PREFIX + self.name


_TABLE: tuple[Command, ...] = (
    Command("connect", "connect", ConnectData, Route.ANY, True, _connect),
    Command("send", "send", SendData, Route.OWNER, True, _send),
    Command("sendraw", "sendraw", SendRawData, Route.OWNER, True, _sendraw),
    Command("disconnect", "disconnect", IdData, Route.OWNER, True, _disconnect),
    Command("publish.start", "publish", PublishData, Route.OWNER, True, _start),
    Command("publish.stop", "publish", IdData, Route.OWNER, True, _stop),
    Command("tags.set", "tags", TagsSetData, Route.OWNER, True, _tags_set),
    Command("tags.get", "tags", TagsGetData, Route.OWNER, False, _tags_get),
    Command("list", "list", ListData, Route.ANY, False, _list),
    Command("get", "list", IdData, Route.ANY, False, _get),
    Command("reclaim", "reclaim", NoData, Route.RECLAIM, False, _nothing, PING_TYPE),
    Command("reclaim", "reclaim", NoData, Route.RECLAIM, False, _nothing),
)

#: Commands by CloudEvent type.
COMMANDS: Mapping[str, Command] = {c.event_type: c for c in _TABLE}

#: Function name -> the commands it serves by plain-HTTP method (see functions/README.md).
FUNCTIONS: Mapping[str, Mapping[str, tuple[Command, ...]]] = {
    "connect": {"POST": (COMMANDS[COMMAND_PREFIX + "connect"],)},
    "send": {"POST": (COMMANDS[COMMAND_PREFIX + "send"],)},
    "sendraw": {"POST": (COMMANDS[COMMAND_PREFIX + "sendraw"],)},
    "disconnect": {
        "POST": (COMMANDS[COMMAND_PREFIX + "disconnect"],),
        "DELETE": (COMMANDS[COMMAND_PREFIX + "disconnect"],),
    },
    "publish": {
        "POST": (COMMANDS[COMMAND_PREFIX + "publish.start"],),
        "DELETE": (COMMANDS[COMMAND_PREFIX + "publish.stop"],),
    },
    "tags": {
        "POST": (COMMANDS[COMMAND_PREFIX + "tags.set"],),
        "PUT": (COMMANDS[COMMAND_PREFIX + "tags.set"],),
        "GET": (COMMANDS[COMMAND_PREFIX + "tags.get"],),
    },
    # With an ``id`` it is Get, without one List (filters in ``tags``, or query k=v pairs).
    "list": {
        "GET": (COMMANDS[COMMAND_PREFIX + "get"], COMMANDS[COMMAND_PREFIX + "list"]),
        "POST": (COMMANDS[COMMAND_PREFIX + "get"], COMMANDS[COMMAND_PREFIX + "list"]),
    },
    "reclaim": {"POST": (COMMANDS[COMMAND_PREFIX + "reclaim"],)},
}


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "data"


def parse_data(command: Command, data: Mapping[str, Any]) -> _Data:
    """Validate a command's data; the error names the field.

    Raises:
        InvalidArgument: a missing, unknown or mistyped field, or a value the rules refuse.
    """
    try:
        return command.model.model_validate(dict(data), strict=True)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            cause = (err.get("ctx") or {}).get("error")
            text = cause.message if isinstance(cause, InvalidArgument) else err["msg"]
            where = _location(err["loc"])
            problems.append(text if where == "data" else f"{where}: {text}")
        raise InvalidArgument(
            f"invalid {command.name} command data: " + "; ".join(problems),
            command=command.name,
        ) from None
