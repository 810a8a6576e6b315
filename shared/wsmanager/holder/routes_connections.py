"""REST routes for connections (brief §5): connect, list, get, disconnect, publish, send.

Each handler parses and validates everything first (bodies, payload encodings, sizes), then
makes exactly one manager call: a bad request is refused before anything changes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from wsmanager.core.errors import NotFound
from wsmanager.core.framing import decode_payload, encode_payload, media_type
from wsmanager.core.validation import (
    MAX_TAG_KEY,
    MAX_TIMEOUT_MS,
    MAX_TOPIC,
    MAX_URL,
    parse_tag_filters,
    validate_tags,
    validate_topic,
)
from wsmanager.holder.routes_common import (
    HOLDER,
    PayloadTooLarge,
    RouteSpec,
    correlation_id,
    json_response,
    read_body,
    render_record,
)

__all__ = [
    "ROUTES",
    "ConnectRequest",
    "ConnectResponse",
    "Connection",
    "Empty",
    "ListResponse",
    "PublishRequest",
    "SendRawRequest",
    "SendRequest",
    "SendResponse",
    "Strict",
    "connection_id_of",
    "payload_of",
]

#: Longest connection id accepted in a path; ids we issue are 36-character UUIDs.
MAX_ID = 128


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Empty(Strict):
    """An empty JSON object (google.protobuf.Empty)."""


class ConnectRequest(Strict):
    url: str = Field(min_length=1, max_length=MAX_URL, description="ws:// or wss:// URL")
    auto_reconnect: bool = Field(False, description="Reconnect (5 attempts) if the socket drops")
    tags: dict[str, str] | None = Field(
        None, description="At most 50; key 1-128 chars, value at most 1024 chars"
    )
    content_type: str = Field(
        "text/plain",
        max_length=255,
        description="Default content type of this connection's frames (text/* and "
        "application/json: Text frames; anything else: Binary frames)",
    )


class ConnectResponse(Strict):
    connection_id: str
    status: str


class Connection(Strict):
    id: str
    url: str = Field(description="Credentials (userinfo, secret query values) redacted")
    status: str = Field(description="CONNECTING, CONNECTED, RECONNECTING or DISCONNECTED")
    instance_id: str | None = Field(description="Owner instance; null while released (R11)")
    topic: str = Field(description="Publish topic; empty when not publishing")
    tags: dict[str, str]
    created_at: str = Field(description="ISO-8601 UTC")
    auto_reconnect: bool
    fencing_token: int
    content_type: str


class ListResponse(Strict):
    connections: list[Connection]


class SendRequest(Strict):
    message: str = Field(description="Text for text content types, else base64")
    content_type: str | None = Field(
        None, max_length=255, description="Defaults to the connection's content type"
    )
    timeout_ms: int | None = Field(
        None, ge=1, le=MAX_TIMEOUT_MS, description="Reply timeout; default DefaultTimeoutMs"
    )


class SendResponse(Strict):
    response: str = Field(
        description="The reply without its correlation prefix, encoded like the message"
    )
    content_type: str


class SendRawRequest(Strict):
    message: str = Field(description="Text for text content types, else base64")
    content_type: str | None = Field(
        None, max_length=255, description="Defaults to the connection's content type"
    )


class PublishRequest(Strict):
    topic: str = Field(min_length=1, max_length=MAX_TOPIC)


def connection_id_of(request: web.Request) -> str:
    """The ``{id}`` path segment. Something no record could have is simply not found."""
    connection_id = request.match_info["id"]
    if not 0 < len(connection_id) <= MAX_ID or not connection_id.isprintable():
        raise NotFound("Connection not found")
    return connection_id


async def payload_of(
    request: web.Request, connection_id: str, message: str, content_type: str | None
) -> tuple[bytes, str]:
    """Decode a request's ``message`` with its content type (default: the connection's).

    Raises:
        InvalidArgument: bad content type, bad base64, text without a UTF-8 form.
        PayloadTooLarge: the decoded message is larger than ``MaxMessageBytes``.
        NotFound: no content type given and no such connection.
    """
    state = request.app[HOLDER]
    if content_type is None:
        # The connection's own content type: from the socket held here when there is one (the
        # hot path: no store read), else from its record.
        held = state.manager.connections.get(connection_id)
        if held is not None:
            content_type = held.content_type
        else:
            content_type = (await state.manager.get(connection_id)).content_type
    else:
        media_type(content_type)  # validates; the full value (charset …) is kept
    payload = decode_payload(message, content_type)
    limit = state.settings.max_message_bytes
    if len(payload) > limit:
        raise PayloadTooLarge(f"message is larger than MaxMessageBytes ({limit} bytes)")
    return payload, content_type


async def connect(request: web.Request) -> web.Response:
    body = await read_body(request, ConnectRequest)
    media_type(body.content_type)
    tags = validate_tags(body.tags)
    record = await request.app[HOLDER].manager.connect(
        body.url,
        tags=tags,
        auto_reconnect=body.auto_reconnect,
        content_type=body.content_type,
        correlation_id=correlation_id(request),
    )
    return json_response({"connection_id": record.id, "status": record.status.value})


async def list_connections(request: web.Request) -> web.Response:
    filters = parse_tag_filters(list(request.query.items()))
    records = await request.app[HOLDER].manager.list(filters or None)
    return json_response({"connections": [render_record(r) for r in records]})


async def get_connection(request: web.Request) -> web.Response:
    record = await request.app[HOLDER].manager.get(connection_id_of(request))
    return json_response(render_record(record))


async def disconnect(request: web.Request) -> web.Response:
    connection_id = connection_id_of(request)
    await request.app[HOLDER].manager.disconnect(
        connection_id, correlation_id=correlation_id(request)
    )
    return json_response({})


async def start_publish(request: web.Request) -> web.Response:
    connection_id = connection_id_of(request)
    body = await read_body(request, PublishRequest)
    topic = validate_topic(body.topic)
    record = await request.app[HOLDER].manager.start_publish(
        connection_id, topic, correlation_id=correlation_id(request)
    )
    return json_response(render_record(record))


async def stop_publish(request: web.Request) -> web.Response:
    record = await request.app[HOLDER].manager.stop_publish(
        connection_id_of(request), correlation_id=correlation_id(request)
    )
    return json_response(render_record(record))


async def send(request: web.Request) -> web.Response:
    connection_id = connection_id_of(request)
    body = await read_body(request, SendRequest)
    payload, content_type = await payload_of(
        request, connection_id, body.message, body.content_type
    )
    timeout = None if body.timeout_ms is None else body.timeout_ms / 1000.0
    reply = await request.app[HOLDER].manager.send(
        connection_id,
        payload,
        content_type=content_type,
        timeout=timeout,
        correlation_id=correlation_id(request),
    )
    return json_response(
        {"response": encode_payload(reply, content_type), "content_type": content_type}
    )


async def send_raw(request: web.Request) -> web.Response:
    connection_id = connection_id_of(request)
    body = await read_body(request, SendRawRequest)
    payload, content_type = await payload_of(
        request, connection_id, body.message, body.content_type
    )
    await request.app[HOLDER].manager.send_raw(
        connection_id, payload, content_type=content_type, correlation_id=correlation_id(request)
    )
    return json_response({})


_ID = "/v1/connections/{id}"
_OWNER_ERRORS: tuple[str, ...] = ("NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE")
_FILTERS: dict[str, Any] = {
    "{tag key}": f"Tag filter key=value (key 1-{MAX_TAG_KEY} chars); several are ANDed"
}

ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "POST", "/v1/connect", connect, "Connect", "Open a managed outbound WebSocket",
        body=ConnectRequest, response=ConnectResponse, errors=("UNAVAILABLE",),
    ),
    RouteSpec(
        "GET", "/v1/connections", list_connections, "List",
        "List connections cluster-wide, filtered by tags (AND)",
        response=ListResponse, query=_FILTERS,
    ),
    RouteSpec(
        "GET", _ID, get_connection, "Get", "One connection", response=Connection,
        errors=("NOT_FOUND",),
    ),
    RouteSpec(
        "DELETE", _ID, disconnect, "Disconnect", "Close a connection and remove its record",
        response=Empty, errors=_OWNER_ERRORS, routing="owner",
    ),
    RouteSpec(
        "POST", f"{_ID}/publish", start_publish, "StartPublish",
        "Publish the connection's inbound frames to a topic",
        body=PublishRequest, response=Connection, errors=_OWNER_ERRORS, routing="owner",
    ),
    RouteSpec(
        "DELETE", f"{_ID}/publish", stop_publish, "StopPublish", "Stop publishing",
        response=Connection, errors=_OWNER_ERRORS, routing="owner",
    ),
    RouteSpec(
        "POST", f"{_ID}/send", send, "Send",
        "Correlated request/response: 16-byte UUID prefix (32 hex digits on Text frames)",
        body=SendRequest, response=SendResponse,
        errors=(*_OWNER_ERRORS, "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"),
        routing="owner",
    ),
    RouteSpec(
        "POST", f"{_ID}/sendraw", send_raw, "SendRaw", "Send a message as is (fire-and-forget)",
        body=SendRawRequest, response=Empty, errors=(*_OWNER_ERRORS, "RESOURCE_EXHAUSTED"),
        routing="owner",
    ),
)  # fmt: skip
