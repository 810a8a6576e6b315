"""What every route module shares: the app's typed state, the route table entry, strict JSON
body parsing, record rendering and the correlation id.

Routes are declared as :class:`RouteSpec` values, and the same list is what the app registers
and what :mod:`wsmanager.holder.openapi` describes, so ``/openapi.json`` cannot miss a route.

Bodies are parsed strictly: JSON only (``Content-Type: application/json``), an object, no
duplicate keys, no NaN/Infinity, then a pydantic model with ``extra="forbid"`` and strict types.
Any failure is :class:`InvalidArgument` (400) raised *before* the manager is called, so a bad
request changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from wsmanager.core.errors import InvalidArgument, Unavailable, WsmError
from wsmanager.core.model import ConnectionRecord, Owner
from wsmanager.core.validation import redact_url, trace_id, usable_correlation_id

if TYPE_CHECKING:
    from wsmanager.config import Settings
    from wsmanager.holder.audit import AuditLog
    from wsmanager.holder.bootstrap import Components
    from wsmanager.holder.cluster import Cluster
    from wsmanager.holder.metrics import HolderMetrics
    from wsmanager.ports import Publisher, StateStore

__all__ = [
    "CORRELATION_HEADER",
    "CORRELATION_ID",
    "HOLDER",
    "HeldConnection",
    "HolderState",
    "Manager",
    "PayloadTooLarge",
    "RouteSpec",
    "correlation_id",
    "json_response",
    "read_body",
    "render_record",
]

CORRELATION_HEADER = "X-Correlation-Id"
_JSON_TYPES = frozenset({"application/json"})
_random = random.Random()

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PayloadTooLarge(InvalidArgument):
    """A request body or message larger than the holder accepts: bad input, answered 413."""

    http_status = 413


class HeldConnection(Protocol):
    """What the routes read of a connection held on this holder."""

    content_type: str


class Manager(Protocol):
    """The part of ``ConnectionManager`` the routes call (``/tmp/holder_interface.md``)."""

    @property
    def connections(self) -> Mapping[str, HeldConnection]:
        """Connections whose sockets this holder holds, by id (read only here)."""
        ...

    async def connect(
        self,
        url: str,
        *,
        tags: Mapping[str, str] | None = ...,
        auto_reconnect: bool = ...,
        content_type: str = ...,
        correlation_id: str,
    ) -> ConnectionRecord: ...

    async def send(
        self,
        connection_id: str,
        payload: bytes,
        *,
        content_type: str | None = ...,
        timeout: float | None = ...,
        correlation_id: str,
    ) -> bytes: ...

    async def send_raw(
        self,
        connection_id: str,
        payload: bytes,
        *,
        content_type: str | None = ...,
        correlation_id: str,
    ) -> None: ...

    async def disconnect(self, connection_id: str, *, correlation_id: str) -> None: ...

    async def start_publish(
        self, connection_id: str, topic: str, *, correlation_id: str
    ) -> ConnectionRecord: ...

    async def stop_publish(
        self, connection_id: str, *, correlation_id: str
    ) -> ConnectionRecord: ...

    async def get(self, connection_id: str) -> ConnectionRecord: ...

    async def list(self, filters: Mapping[str, str] | None = ...) -> list[ConnectionRecord]: ...

    async def get_tags(self, connection_id: str) -> dict[str, str]: ...

    async def get_tag(self, connection_id: str, key: str) -> str | None: ...

    async def set_tag(
        self, connection_id: str, key: str, value: str, *, correlation_id: str
    ) -> None: ...

    async def set_tags(
        self, connection_id: str, tags: Mapping[str, str], *, correlation_id: str
    ) -> None: ...


@dataclass(slots=True)
class HolderState:
    """Everything the routes need, under one AppKey. Mutable on purpose: the app is frozen when
    its cleanup context starts, so the parts built there are filled into this object instead of
    into new app keys."""

    settings: Settings
    token: str
    owner: Owner
    audit: AuditLog
    metrics: HolderMetrics
    #: The app's ``client_max_size``: the largest request body read, in bytes.
    max_body: int
    components: Components | None = None
    #: Every route the app serves (what ``/openapi.json`` describes).
    routes: tuple[RouteSpec, ...] = ()
    #: Set once the manager has started; cleared when shutdown begins (``/ready`` reads it).
    started: bool = False
    #: Set at shutdown so long-lived responses (``tail``) end instead of holding the server.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def _require(self) -> Components:
        if self.components is None or not self.started:
            raise Unavailable("the holder is starting or stopping")
        return self.components

    @property
    def manager(self) -> Manager:
        manager: Manager = self._require().manager
        return manager

    @property
    def cluster(self) -> Cluster:
        """Discovery, forwarding and reclaim of this holder (R3-R7)."""
        cluster = self._require().cluster
        if cluster is None:
            raise Unavailable("this holder runs without its cluster components")
        return cluster

    @property
    def store(self) -> StateStore:
        return self._require().store

    @property
    def publisher(self) -> Publisher:
        return self._require().publisher


HOLDER = web.AppKey("wsm_holder", HolderState)
#: The request's correlation id, set first thing by the edge middleware.
CORRELATION_ID = web.RequestKey("wsm_correlation_id", str)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One REST route: what the app registers and what the OpenAPI document describes."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    handler: Handler
    operation_id: str
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    #: Error codes the route may answer besides the ones every /v1 route shares.
    errors: tuple[str, ...] = ()
    auth: bool = True
    #: Response media type when not JSON (``/metrics`` text, ``tail`` NDJSON).
    media_type: str = "application/json"
    query: Mapping[str, str] = field(default_factory=dict)
    #: R3: ``"owner"``: only the owner runs it (forwarded, or reclaimed first, from any other
    #: holder); ``"read"``: the owner answers while it can, else it is read here from the store.
    routing: Literal["owner", "read"] | None = None


def correlation_id(request: web.Request) -> str:
    """The request's correlation id: ``X-Correlation-Id`` if usable, else the W3C
    ``traceparent`` trace id, else a new one. Stored on the request by the edge middleware."""
    if CORRELATION_ID in request:
        return request[CORRELATION_ID]
    headers = request.headers
    given = usable_correlation_id(headers.get(CORRELATION_HEADER))
    if given is not None:
        return given
    traced = trace_id(headers.get("traceparent"))
    if traced is not None:
        return traced
    # Not a secret, just unique: 128 bits from the PRNG cost no system call (uuid4 does one).
    return f"{_random.getrandbits(128):032x}"


def json_response(data: Any, *, status: int = 200) -> web.Response:
    if status == 200 and data == {}:  # the most frequent answer (sendraw, disconnect): no dumps
        return web.Response(body=b"{}", content_type="application/json")
    return web.json_response(data, status=status, dumps=_dumps)


# Built once: json.dumps with options builds a new encoder on every call.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _reject_constant(name: str) -> Any:
    raise InvalidArgument(f"request body is not valid JSON ({name} is not JSON)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidArgument(f"request body has the key {key[:40]!r} twice")
        out[key] = value
    return out


# Built once (json.loads with options builds a decoder per call): duplicate keys and the
# non-JSON constants NaN/Infinity are refused, not silently accepted.
_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def read_body(request: web.Request, model: type[M]) -> M:
    """Parse the request body into ``model`` strictly; see the module doc.

    Raises:
        InvalidArgument: wrong content type, not JSON, not an object, unknown or mistyped field.
        PayloadTooLarge: larger than the app's ``client_max_size``.
    """
    if request.content_type not in _JSON_TYPES:
        raise InvalidArgument("Content-Type must be application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[HOLDER].max_body
        raise PayloadTooLarge(f"request body is larger than {limit} bytes") from None
    if not raw:
        raise InvalidArgument("request body is empty; expected a JSON object")
    try:
        # RFC 8259 §8.1: JSON between systems is UTF-8.
        data = _decoder.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, WsmError):
            raise
        raise InvalidArgument("request body is not valid JSON") from None
    except RecursionError:
        raise InvalidArgument("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        problems = [f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        raise InvalidArgument("invalid request body: " + "; ".join(problems)) from None


def iso_utc(ts: float) -> str:
    """Seconds since the epoch as ISO-8601 UTC with a ``Z`` (google.protobuf.Timestamp JSON)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_record(record: ConnectionRecord) -> dict[str, Any]:
    """A record as List/Get show it. The URL is redacted: credentials are never returned."""
    return {
        "id": record.id,
        "url": redact_url(record.url),
        "status": record.status.value,
        "instance_id": record.owner.instance_id if record.owner else None,
        "topic": record.topic or "",
        "tags": dict(record.tags),
        "created_at": iso_utc(record.created_at),
        "auto_reconnect": record.auto_reconnect,
        "fencing_token": record.fencing_token,
        "content_type": record.content_type,
    }
