"""Correlated send over a connection, on its owner (``command.send``).

Run: ``functions-framework --target send --source functions/send/main.py --asgi``
(see functions/README.md). Everything but the entry point lives in ``wsmanager.functions``.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from wsmanager.functions import serve

__all__ = ["send"]


# aio.http, not functions_framework.http: only the aio decorator keeps a coroutine function a
# coroutine function (the other wraps it in a plain def), which ASGI mode needs to await it.
@functions_framework.aio.http
async def send(request: Request) -> Response:
    return await serve("send", request)
