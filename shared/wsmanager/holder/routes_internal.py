"""Holder-to-holder and function-to-holder routes (internal token required, like every route).

``POST /internal/v1/adopt`` ``{"ids": [...]}``: a reclaim (a function's, or a draining peer's
hand-off, R11) has just made this holder the owner of these records; hold them now: open the
socket of each one with ``auto_reconnect`` (R7) instead of waiting for the next sweep.
Idempotent: ids already held at their current token, not found, or owned by someone else (this
incarnation only, R1) are reported and left alone. An optional ``previous_owners`` map (id ->
instance id, or null for a released record) goes into the ``reclaimed`` lifecycle events.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from wsmanager.holder.peers import ADOPT_PATH
from wsmanager.holder.routes_common import HOLDER, RouteSpec, json_response, read_body
from wsmanager.holder.routes_connections import MAX_ID, Strict

__all__ = ["MAX_ADOPT", "ROUTES", "AdoptRequest", "AdoptResponse"]

#: Most ids one adopt call may carry (a sweep takes at most 5,000 per run).
MAX_ADOPT = 10_000


class AdoptRequest(Strict):
    ids: list[str] = Field(max_length=MAX_ADOPT, description="Connection ids to hold")
    previous_owners: dict[str, str | None] | None = Field(
        None, description="Owner each record had before the takeover (null: released)"
    )


class AdoptResponse(Strict):
    adopted: list[str] = Field(description="Now held (sockets opening when auto_reconnect)")
    held: list[str] = Field(description="Already held at their current fencing token")
    no_socket: list[str] = Field(
        description="Mine, with nothing to open (no auto_reconnect, or DISCONNECTED: R7)"
    )
    not_mine: list[str] = Field(description="Owned by another instance or incarnation")
    not_found: list[str]


async def adopt(request: web.Request) -> web.Response:
    body = await read_body(request, AdoptRequest)
    ids = [i for i in body.ids if 0 < len(i) <= MAX_ID and i.isprintable()]
    skipped = [i for i in body.ids if i not in ids]
    result = await request.app[HOLDER].cluster.reclaimer.adopt_ids(
        ids, previous_owners=body.previous_owners
    )
    result["not_found"].extend(skipped)
    return json_response(result)


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "POST", ADOPT_PATH, adopt, "Adopt",
        "Hold records a reclaim just gave this holder (re-open auto_reconnect sockets)",
        body=AdoptRequest, response=AdoptResponse, errors=("UNAVAILABLE",),
    ),
)  # fmt: skip
