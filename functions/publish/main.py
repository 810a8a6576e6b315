"""Start or stop publishing a connection's inbound frames (``command.publish.start|stop``).

Run: ``functions-framework --target publish --source functions/publish/main.py --asgi``
(see functions/README.md). Everything but the entry point lives in ``wsmanager.functions``.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from wsmanager.functions import serve

__all__ = ["publish"]


# aio.http, not functions_framework.http: only the aio decorator keeps a coroutine function a
# coroutine function (the other wraps it in a plain def), which ASGI mode needs to await it.
@functions_framework.aio.http
async def publish(request: Request) -> Response:
    return await serve("publish", request)
