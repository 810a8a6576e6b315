"""The OpenAPI 3.1 document of the holder's REST API, built from the app's own route table.

Every :class:`~wsmanager.holder.routes_common.RouteSpec` the app registers becomes one
operation, with its request and response schemas taken from the same pydantic models the
handlers validate with, so the document and the behaviour cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from wsmanager import __version__
from wsmanager.core.errors import GRPC_CODES
from wsmanager.holder.routes_common import CORRELATION_HEADER, RouteSpec

__all__ = ["ERROR_STATUS", "build_openapi"]

#: HTTP statuses of each error code the API answers (the mapping of ``core.errors``; auth, CORS
#: and the HTTP layer add UNAUTHENTICATED, PERMISSION_DENIED and UNIMPLEMENTED).
ERROR_STATUS: dict[str, tuple[str, ...]] = {
    "INVALID_ARGUMENT": ("400",),
    "UNAUTHENTICATED": ("401",),
    "PERMISSION_DENIED": ("403",),
    "NOT_FOUND": ("404",),
    "UNIMPLEMENTED": ("405",),
    # 412: NotOwner (a stale fencing token or another owner, R3); 409: not connected, …
    "FAILED_PRECONDITION": ("409", "412"),
    "ABORTED": ("409",),
    "RESOURCE_EXHAUSTED": ("429",),
    "INTERNAL": ("500",),
    "UNAVAILABLE": ("503",),
    "DEADLINE_EXCEEDED": ("504",),
}
_COMMON_V1 = ("INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "INTERNAL")
_PARAM = re.compile(r"{(\w+)}")

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": sorted({*GRPC_CODES, "UNIMPLEMENTED"})},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _errors(spec: RouteSpec) -> list[tuple[str, str]]:
    """(status, code) pairs the route may answer."""
    codes = {*(_COMMON_V1 if spec.auth else ("INTERNAL",)), *spec.errors}
    pairs = {(status, code) for code in codes for status in ERROR_STATUS[code]}
    if spec.body is not None:
        pairs.add(("413", "INVALID_ARGUMENT"))  # body larger than the holder accepts
    return sorted(pairs)


def _operation(spec: RouteSpec, components: dict[str, Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(spec.path)
    ]
    for name, text in spec.query.items():
        params.append(
            {"name": name, "in": "query", "required": False, "description": text,
             "schema": {"type": "string"}}
        )  # fmt: skip
    params.append(
        {
            "name": CORRELATION_HEADER,
            "in": "header",
            "required": False,
            "description": "Correlation id for the audit log (else traceparent's trace id, "
            "else generated); echoed in the response",
            "schema": {"type": "string", "maxLength": 128},
        }
    )
    ok: dict[str, Any] = {"description": "OK"}
    if spec.response is not None:
        ok["content"] = {spec.media_type: {"schema": _schema_ref(spec.response, components)}}
    else:
        ok["content"] = {spec.media_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {"200": ok}
    for status, code in _errors(spec):
        entry = responses.setdefault(
            status,
            {"description": "", "content": {"application/json": {"schema": _ERROR_SCHEMA}}},
        )
        entry["description"] = " or ".join(filter(None, [entry["description"], code]))
    operation: dict[str, Any] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "parameters": params,
        "responses": responses,
        "security": [{"bearer": []}] if spec.auth else [],
    }
    if spec.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(spec.body, components)}},
        }
    return operation


def build_openapi(routes: Iterable[RouteSpec]) -> dict[str, Any]:
    """The OpenAPI document for ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {}
    for spec in routes:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wsmanager holder",
            "version": __version__,
            "description": "WebSocket connection manager: REST API of one holder. /v1 routes "
            "need 'Authorization: Bearer <internal token>'; errors are "
            '{"error": {"code", "message"}} with the matching HTTP status.',
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
