"""One reclaim sweep (R7) per PingSource tick (``dev.knative.sources.ping``).

Run: ``functions-framework --target reclaim --source functions/reclaim/main.py --asgi``
(see functions/README.md). Everything but the entry point lives in ``wsmanager.functions``.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from wsmanager.functions import serve

__all__ = ["reclaim"]


# aio.http, not functions_framework.http: only the aio decorator keeps a coroutine function a
# coroutine function (the other wraps it in a plain def), which ASGI mode needs to await it.
@functions_framework.aio.http
async def reclaim(request: Request) -> Response:
    return await serve("reclaim", request)
