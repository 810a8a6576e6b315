"""The holder's aiohttp application: routes, middlewares, lifecycle.

:func:`create_app` builds the app; the holder's pieces (store, publisher, manager, …) are opened
in a ``cleanup_ctx`` by :func:`wsmanager.holder.bootstrap.open_components`, so aiohttp closes
them exactly when they were opened, and a failed start-up leaves nothing running.

One middleware, **edge**, runs around every handler. In order, it:

1. gives the request its correlation id;
2. applies CORS: refuses disallowed origins, answers allowed preflights (:mod:`.auth`);
3. checks the internal bearer token on every route not explicitly open (:mod:`.auth`);
4. runs the handler, and turns every exception into the JSON error body of ``core.errors``
   (HTTP-layer rejections included: unknown route 404, wrong method 405, body over
   ``client_max_size`` 413). Anything unexpected is logged with its traceback and answered
   INTERNAL with no details: internals never leak, and no request takes the process down;
5. counts the request in ``/metrics``.

CORS and auth are plain calls rather than middlewares of their own: each middleware layer costs
a coroutine and a wrapper per request, on the send hot path.

Response headers (correlation id, CORS) are added in ``on_response_prepare`` so error answers
and streamed responses get them too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from wsmanager.config import Settings
from wsmanager.core.errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    WsmError,
    error_body,
    http_status,
)
from wsmanager.core.model import Owner
from wsmanager.holder import (
    routes_connections,
    routes_events,
    routes_internal,
    routes_ops,
    routes_tags,
)
from wsmanager.holder.audit import AuditLog
from wsmanager.holder.auth import CorsPolicy, MethodNotAllowed, TokenGuard
from wsmanager.holder.bootstrap import new_owner, open_components
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.holder.routes_common import (
    CORRELATION_HEADER,
    CORRELATION_ID,
    HOLDER,
    HolderState,
    PayloadTooLarge,
    RouteSpec,
    correlation_id,
    json_response,
)
from wsmanager.ports import Clock, Publisher, StateStore

__all__ = ["ALL_ROUTES", "create_app", "error_response", "serve"]

log = logging.getLogger("wsmanager.holder")

ALL_ROUTES: tuple[RouteSpec, ...] = (
    *routes_connections.ROUTES,
    *routes_tags.ROUTES,
    *routes_events.ROUTES,
    *routes_ops.ROUTES,
    *routes_internal.ROUTES,
)
#: Slack on top of a base64-encoded MaxMessageBytes for the JSON envelope around it.
_BODY_SLACK = 64 * 1024


def error_response(error: BaseException, *, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response(error_body(error), status=http_status(error))
    if headers:
        response.headers.update(headers)
    return response


def _from_http(exc: web.HTTPException, request: web.Request, limit: int) -> WsmError:
    """An aiohttp HTTP-layer rejection as one of our errors (same status, JSON body)."""
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"no route {request.path[:200]!r}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path[:200]!r}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"request body is larger than {limit} bytes")
    return InvalidArgument(exc.reason or "bad request")


def _edge(state: HolderState, cors: CorsPolicy, guard: TokenGuard) -> Middleware:
    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[CORRELATION_ID] = correlation_id(request)
        try:
            early = await cors.gate(request)
            if early is None:
                guard.check(request)
                response = await handler(request)
            else:
                response = early
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = _from_http(exc, request, state.max_body)
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = error_response(error, headers=allow)
            response.set_status(exc.status)  # keep aiohttp's status (e.g. 413, 405)
        except WsmError as exc:
            if exc.retryable or exc.http_status >= 500:
                log.warning("%s %s: %s", request.method, request.path, exc.code)
            challenge = {"WWW-Authenticate": 'Bearer realm="wsmanager"'}
            response = error_response(exc, headers=challenge if exc.http_status == 401 else None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "unhandled error in %s %s (correlation id %s)",
                request.method,
                request.path,
                request[CORRELATION_ID],
            )
            response = error_response(RuntimeError())  # INTERNAL, no details
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(unmatched)"
        state.metrics.observe_request(
            request.method, route, response.status, time.perf_counter() - started
        )
        return response

    return edge


def _routed(spec: RouteSpec) -> Handler:
    """R3: the handler of an owner-only route, behind the owner router (forwarding.py)."""
    handler, operation, read_only = spec.handler, spec.operation_id, spec.routing == "read"

    async def routed(request: web.Request) -> web.StreamResponse:
        router = request.app[HOLDER].cluster.router
        return await router.handle(request, handler, operation=operation, read_only=read_only)

    return routed


def _on_prepare(cors: CorsPolicy) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if CORRELATION_ID in request:
            response.headers[CORRELATION_HEADER] = request[CORRELATION_ID]
        if "Origin" in request.headers:
            response.headers.update(cors.headers(request))

    return on_prepare


async def _on_shutdown(app: web.Application) -> None:
    # First thing at shutdown: /ready turns 503 and streaming responses end, so the server's
    # wait for in-flight handlers is short.
    app[HOLDER].stopping.set()


def _lifecycle(
    *,
    store: StateStore | None,
    publisher: Publisher | None,
    clock: Clock | None,
    drain: bool,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[HOLDER]
        async with open_components(
            state.settings,
            owner=state.owner,
            token=state.token,
            audit=state.audit,
            metrics=state.metrics,
            store=store,
            publisher=publisher,
            clock=clock,
            drain=drain,
        ) as components:
            state.components = components
            state.started = True
            log.info(
                "holder %s started (incarnation %s)",
                state.owner.instance_id,
                state.owner.incarnation,
            )
            try:
                yield
            finally:
                state.started = False
        state.components = None

    return lifecycle


def create_app(
    settings: Settings,
    *,
    token: str | None = None,
    owner: Owner | None = None,
    store: StateStore | None = None,
    publisher: Publisher | None = None,
    clock: Clock | None = None,
    audit: AuditLog | None = None,
    metrics: HolderMetrics | None = None,
    drain: bool = True,
) -> web.Application:
    """The holder app. Backends not passed in are opened from ``settings`` at start-up.

    Args:
        token: the internal bearer token; default ``WSM_INTERNAL_TOKEN``.
        drain: release connections ownerless at shutdown (R11), as a SIGTERM'd pod must.

    Raises:
        ConfigError: no internal token (the holder never serves /v1 unauthenticated).
    """
    if token is None and settings.internal_token is not None:
        token = settings.internal_token.get_secret_value()
    if not token:
        raise ConfigError("WSM_INTERNAL_TOKEN", "required: the holder refuses to run without one")
    metrics = metrics or HolderMetrics()
    state = HolderState(
        settings=settings,
        token=token,
        owner=owner or new_owner(settings),
        audit=audit or AuditLog(on_failure=metrics.audit_failures.inc),
        metrics=metrics,
        max_body=settings.max_message_bytes * 4 // 3 + _BODY_SLACK,
        routes=ALL_ROUTES,
    )
    cors = CorsPolicy(settings.cors_allowed_origins)
    guard = TokenGuard(token, [spec.path for spec in ALL_ROUTES if not spec.auth])
    app = web.Application(middlewares=[_edge(state, cors, guard)], client_max_size=state.max_body)
    app[HOLDER] = state
    # The router tries the routes under one path prefix in registration order: the send routes
    # (the hot path) go first so a send does not try every other connection route before.
    for spec in sorted(ALL_ROUTES, key=lambda s: not s.path.endswith(("/send", "/sendraw"))):
        handler = _routed(spec) if spec.routing is not None else spec.handler
        app.router.add_route(spec.method, spec.path, handler, name=spec.operation_id)
    app.on_response_prepare.append(_on_prepare(cors))
    app.on_shutdown.append(_on_shutdown)
    app.cleanup_ctx.append(_lifecycle(store=store, publisher=publisher, clock=clock, drain=drain))
    return app


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_listening: Callable[[str], None] | None = None,
    shutdown_timeout: float = 10.0,
) -> None:
    """Run ``app`` on ``host:port`` until ``stop`` is set, then shut down gracefully.

    Start-up errors (a backend that does not answer, a port in use) propagate after whatever
    was opened has been closed again.
    """
    # No access log: every request is already counted in /metrics and every mutation audited,
    # and a log line per request would cost more than the request on the send hot path.
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=shutdown_timeout)  # fmt: skip
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if on_listening is not None:
            shown = f"[{host}]" if ":" in host else host
            on_listening(f"http://{shown}:{port}")
        await stop.wait()
    finally:
        await runner.cleanup()
