"""Serving the functions: from functions-framework's Starlette request, or as one ASGI app.

* :func:`serve` is what ``functions/<name>/main.py`` calls: functions-framework in ASGI mode
  (``--asgi``) hands an ``@functions_framework.aio.http`` function a Starlette ``Request``.
* :func:`create_app` is a plain ASGI app with every function mounted at ``/<name>`` (for
  ``wsm serve``, uvicorn, or any ASGI server); it needs no functions-framework.
* An aiohttp route can call :func:`wsmanager.functions.handlers.handle` directly with an
  :class:`~wsmanager.functions.decoding.Incoming` and turn the :class:`Reply` into a response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from wsmanager.functions.commands import FUNCTIONS
from wsmanager.functions.decoding import Incoming
from wsmanager.functions.handlers import handle
from wsmanager.functions.replies import Reply
from wsmanager.functions.runtime import Runtime, close_deps, deps

__all__ = ["FunctionsApp", "create_app", "serve"]


async def serve(function: str, request: Request) -> Response:
    """Answer a functions-framework (ASGI mode) request for ``function``."""
    incoming = Incoming.of(
        request.method,
        request.headers.items(),
        await request.body(),
        tuple(request.query_params.multi_items()),
    )
    reply = await handle(function, incoming)
    return Response(reply.body, status_code=reply.status, headers=dict(reply.headers))


class FunctionsApp:
    """Every function at ``{prefix}/{name}``, as a plain ASGI application.

    Args:
        runtime: the dependencies to use; ``None``: built from ``os.environ`` at first request
            (:func:`~wsmanager.functions.runtime.deps`) and closed at lifespan shutdown.
        prefix: a path prefix such as ``/functions``.
    """

    def __init__(self, runtime: Runtime | None = None, *, prefix: str = "") -> None:
        self.runtime = runtime
        self.prefix = prefix.rstrip("/")

    def __repr__(self) -> str:
        return f"FunctionsApp(prefix={self.prefix!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        name = path[len(self.prefix) :].strip("/").split("/", 1)[0]
        if not path.startswith(self.prefix) or name not in FUNCTIONS:
            await _send(send, _not_found(path))
            return
        runtime = self.runtime or await deps()
        body = await _read_body(receive, runtime.max_body)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        query = tuple(parse_qsl(scope.get("query_string", b"").decode("latin-1"), True))
        incoming = Incoming.of(scope["method"], headers, body, query)
        await _send(send, await handle(name, incoming, runtime=runtime))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is None:
                    await close_deps()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(runtime: Runtime | None = None, *, prefix: str = "") -> FunctionsApp:
    """The ASGI app of every function (see :class:`FunctionsApp`)."""
    return FunctionsApp(runtime, prefix=prefix)


def _not_found(path: str) -> Reply:
    body = {"error": {"code": "NOT_FOUND", "message": f"no function at {path[:200]!r}"}}
    return Reply(404, (("content-type", "application/json"),), json.dumps(body).encode())


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, cut at ``limit + 1`` bytes (the handler then answers 413)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message: Mapping[str, Any] = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if size <= limit:
            chunks.append(chunk[: limit + 1 - size])
        size += len(chunk)
        more = bool(message.get("more_body", False))
    return b"".join(chunks)


async def _send(send: Send, reply: Reply) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
