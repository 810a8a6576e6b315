"""Who may call the holder: the internal-token check and CORS (brief §8).

**Token.** Every route is closed unless its :class:`RouteSpec` says ``auth=False``; only
``/health``, ``/ready``, ``/metrics`` and ``/openapi.json`` say so (probes, scrapers and API
browsers carry no secret, and none of them reveals or changes a connection). Everything else,
including paths that match no route, needs ``Authorization: Bearer <internal token>``; the
token is compared in constant time (:func:`hmac.compare_digest`). Deny by default means a route
added later is protected unless someone decides otherwise.

**CORS.** No origin is allowed unless ``Cors:AllowedOrigins`` lists it (or lists ``*``). A
request carrying a disallowed ``Origin`` is refused with 403 before it reaches a handler (not
just left without CORS headers): a browser "simple request" would otherwise still run. A
preflight from an allowed origin is answered here, before authentication, since browsers never
send credentials on a preflight.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from aiohttp import web

from wsmanager.core.errors import (
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

__all__ = [
    "ALLOWED_HEADERS",
    "CorsPolicy",
    "MethodNotAllowed",
    "PermissionDenied",
    "TokenGuard",
    "Unauthenticated",
    "origin_allowed",
]

#: Request headers a browser may send cross-origin (lower-case, as preflights list them).
ALLOWED_HEADERS = ("authorization", "content-type", "traceparent", "x-correlation-id")
_PREFLIGHT_MAX_AGE = "600"


def _route_path(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _bearer(header: str) -> str | None:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


class TokenGuard:
    """Requires the internal token on every route except ``open_paths`` (canonical paths)."""

    def __init__(self, token: str, open_paths: Iterable[str]) -> None:
        self._expected = token.encode("utf-8")
        self._open = frozenset(open_paths)

    def __repr__(self) -> str:
        return f"TokenGuard(open={sorted(self._open)})"

    def check(self, request: web.Request) -> None:
        """Raises:
        Unauthenticated: no ``Authorization: Bearer`` header, or the wrong token."""
        if _route_path(request) in self._open:
            return
        header = request.headers.get("Authorization")
        if header is None:
            raise Unauthenticated("missing 'Authorization: Bearer <token>' header")
        given = _bearer(header)
        # compare_digest on bytes: a non-ASCII token is compared, not rejected early.
        if given is None or not hmac.compare_digest(given.encode("utf-8"), self._expected):
            raise Unauthenticated("invalid bearer token")


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    allowed = tuple(allowed)
    return "*" in allowed or origin in allowed


class CorsPolicy:
    """Refuses disallowed origins and answers the preflights of allowed ones."""

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self.allowed = tuple(allowed_origins)

    def __repr__(self) -> str:
        return f"CorsPolicy({list(self.allowed)})"

    async def gate(self, request: web.Request) -> web.StreamResponse | None:
        """The preflight answer, or ``None`` to go on handling the request.

        Raises:
            PermissionDenied: the request's ``Origin`` is not allowed.
            NotFound, MethodNotAllowed: a preflight for a route or method that does not exist.
        """
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not a browser's cross-origin request
        if not origin_allowed(origin, self.allowed):
            raise PermissionDenied(
                f"origin {origin[:200]!r} is not allowed (configure Cors:AllowedOrigins)"
            )
        wanted = request.headers.get("Access-Control-Request-Method")
        if request.method != "OPTIONS" or wanted is None:
            return None
        return await _preflight(request, wanted.strip().upper())

    def headers(self, request: web.Request) -> dict[str, str]:
        """Headers to add to a response for an allowed cross-origin request (else none)."""
        origin = request.headers.get("Origin")
        if origin is None or not origin_allowed(origin, self.allowed):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "X-Correlation-Id",
            "Vary": "Origin",
        }


async def _preflight(request: web.Request, method: str) -> web.StreamResponse:
    match = await request.app.router.resolve(request.clone(method=method))
    problem = match.http_exception
    if isinstance(problem, web.HTTPNotFound):
        raise NotFound(f"no route {request.path[:200]!r}")
    if problem is not None:
        raise MethodNotAllowed(f"{method[:20]} is not allowed on {request.path[:200]!r}")
    asked = request.headers.get("Access-Control-Request-Headers", "")
    headers = [h.strip().lower() for h in asked.split(",") if h.strip()]
    granted = [h for h in headers if h in ALLOWED_HEADERS]
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": method,
            "Access-Control-Allow-Headers": ", ".join(granted or ALLOWED_HEADERS),
            "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE,
        },
    )
