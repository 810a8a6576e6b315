"""List connections (tag filters, AND) or get one by id, from any live holder.

Run: ``functions-framework --target list --source functions/list/main.py --asgi``
(see functions/README.md). Everything but the entry point lives in ``wsmanager.functions``.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from wsmanager.functions import serve

__all__ = ["list"]


# aio.http, not functions_framework.http: only the aio decorator keeps a coroutine function a
# coroutine function (the other wraps it in a plain def), which ASGI mode needs to await it.
@functions_framework.aio.http
async def list(request: Request) -> Response:
    return await serve("list", request)
