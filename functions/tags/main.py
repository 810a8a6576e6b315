"""Set (or read) a connection's tags, on its owner (``command.tags.set``).

Run: ``functions-framework --target tags --source functions/tags/main.py --asgi``
(see functions/README.md). Everything but the entry point lives in ``wsmanager.functions``.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from wsmanager.functions import serve

__all__ = ["tags"]


# aio.http, not functions_framework.http: only the aio decorator keeps a coroutine function a
# coroutine function (the other wraps it in a plain def), which ASGI mode needs to await it.
@functions_framework.aio.http
async def tags(request: Request) -> Response:
    return await serve("tags", request)
