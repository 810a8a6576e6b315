"""REST routes for tags (brief §5): get/set one tag, get/replace all tags.

Tags are resource metadata for filtering; they never travel to the remote socket. Setting tags
is a change of the record, so only the owner does it (R3).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from wsmanager.core.validation import (
    MAX_TAG_VALUE,
    validate_tag_key,
    validate_tag_value,
    validate_tags,
)
from wsmanager.holder.routes_common import (
    HOLDER,
    RouteSpec,
    correlation_id,
    json_response,
    read_body,
)
from wsmanager.holder.routes_connections import Strict, connection_id_of

__all__ = ["ROUTES", "TagResponse", "TagValue", "Tags"]


class TagValue(Strict):
    value: str = Field(max_length=MAX_TAG_VALUE)


class TagResponse(Strict):
    key: str
    value: str | None = Field(description="null when the tag is not set")


class Tags(Strict):
    tags: dict[str, str] = Field(description="At most 50; key 1-128 chars, value <= 1024")


def _key_of(request: web.Request) -> str:
    return validate_tag_key(request.match_info["key"])


async def get_tag(request: web.Request) -> web.Response:
    connection_id = connection_id_of(request)
    key = _key_of(request)
    value = await request.app[HOLDER].manager.get_tag(connection_id, key)
    return json_response({"key": key, "value": value})


async def set_tag(request: web.Request) -> web.Response:
    connection_id = connection_id_of(request)
    key = _key_of(request)
    body = await read_body(request, TagValue)
    value = validate_tag_value(key, body.value)
    await request.app[HOLDER].manager.set_tag(
        connection_id, key, value, correlation_id=correlation_id(request)
    )
    return json_response({"key": key, "value": value})


async def get_tags(request: web.Request) -> web.Response:
    tags = await request.app[HOLDER].manager.get_tags(connection_id_of(request))
    return json_response({"tags": dict(tags)})


async def set_tags(request: web.Request) -> web.Response:
    connection_id = connection_id_of(request)
    body = await read_body(request, Tags)
    tags = validate_tags(body.tags)
    await request.app[HOLDER].manager.set_tags(
        connection_id, tags, correlation_id=correlation_id(request)
    )
    return json_response({"tags": tags})


_TAGS = "/v1/connections/{id}/tags"
_WRITE_ERRORS = ("NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE")
_READ_ERRORS = ("NOT_FOUND", "UNAVAILABLE")

ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "GET", _TAGS + "/{key}", get_tag, "GetTag", "One tag's value (null when unset)",
        response=TagResponse, errors=_READ_ERRORS, routing="read",
    ),
    RouteSpec(
        "POST", _TAGS + "/{key}", set_tag, "SetTag", "Set one tag",
        body=TagValue, response=TagResponse, errors=_WRITE_ERRORS, routing="owner",
    ),
    RouteSpec(
        "GET", _TAGS, get_tags, "GetTags", "All tags of a connection",
        response=Tags, errors=_READ_ERRORS, routing="read",
    ),
    RouteSpec(
        "PUT", _TAGS, set_tags, "SetTags", "Replace all tags of a connection",
        body=Tags, response=Tags, errors=_WRITE_ERRORS, routing="owner",
    ),
)  # fmt: skip
