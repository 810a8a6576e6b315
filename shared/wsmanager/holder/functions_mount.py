"""The CloudEvent functions served by a holder, for ``wsm serve`` (one process, whole system).

``wsm serve`` accepts the same CloudEvents a cluster's Knative Triggers deliver: every function
of ``functions/`` answers at ``POST /functions/<name>`` (binary or structured CloudEvents, or
plain JSON), through the very handler the functions-framework entry points call
(:func:`wsmanager.functions.handlers.handle`). The functions share the holder's state store and
reach holders over HTTP with the internal token, exactly as deployed functions do; the route is
behind the holder's token check like every other non-probe route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from wsmanager.functions.commands import FUNCTIONS
from wsmanager.functions.decoding import Incoming
from wsmanager.functions.handlers import handle
from wsmanager.functions.runtime import Runtime
from wsmanager.holder.routes_common import HOLDER

__all__ = ["FUNCTIONS_PATH", "mount_functions"]

FUNCTIONS_PATH = "/functions/{name}"


def mount_functions(app: web.Application) -> None:
    """Add ``/functions/{name}`` to a holder app made by ``create_app`` (call before start-up).

    The functions' runtime is opened after the holder's own components (cleanup contexts run in
    registration order) and closed before them.
    """
    box: dict[str, Runtime] = {}

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FUNCTIONS or "runtime" not in box:
            raise web.HTTPNotFound()
        incoming = Incoming.of(
            request.method,
            list(request.headers.items()),
            await request.read(),
            tuple(request.query.items()),
        )
        reply = await handle(name, incoming, runtime=box["runtime"])
        return web.Response(status=reply.status, headers=list(reply.headers), body=reply.body)

    app.router.add_route("POST", FUNCTIONS_PATH, handler, name="functions")
    app.cleanup_ctx.append(_runtime_context(box))


def _runtime_context(
    box: dict[str, Runtime],
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        state = app[HOLDER]
        components: Any = state.components
        runtime = await Runtime.open(
            state.settings, store=components.store if components else None, token=state.token
        )
        box["runtime"] = runtime
        try:
            yield
        finally:
            box.pop("runtime", None)
            await runtime.aclose()

    return context
