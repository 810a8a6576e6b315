"""Any holder accepts any command (R3): act here, forward to the owner, or reclaim and act.

Routes on ``/v1/connections/{id}/…`` that only the owner may run (send, sendraw, publish start
and stop, tag changes, disconnect; tag reads too) go through :meth:`OwnerRouter.handle`:

1. **Held here** (the fast path, no store read): this holder holds the connection's socket, is
   not fenced (R8) and the caller named no other token. Safe without a read because nobody can
   take a record over from an owner that is not fenced: the renew deadline ends before the
   takeover window opens (R6, R8), and the lease keeper drops what it finds lost.
2. **Cached route** (no store read either): the owner's endpoint, remembered per connection with
   the fencing token it was routed on. The request goes there with :data:`TOKEN_HEADER`; the
   owner refuses a token that is not its current one with NotOwner (412), and only then is the
   cache entry dropped, the record re-read and the request routed once more. A stale cache entry
   can therefore cost a hop, never a wrong action.
3. **Resolve** (a record read, and a heartbeat read unless discovery has it): mine -> act here
   (adopting the record first if its socket should be open but is not held); owned by a live
   peer -> forward; owner dead (R4/R5) or record released (R11) -> lazy reclaim (R6/R7: only
   once eligible, else UNAVAILABLE, retryable), adopt, and act here; owner alive but not
   answering -> UNAVAILABLE (OwnerUnreachable, retryable), never a reclaim (R6).

A forwarded request (it carries :data:`FORWARDED_HEADER`) is never forwarded again: a holder
that does not own the record at that token answers NotOwner naming the current owner, so
forwarding cannot loop. The owner's answer (status and body) is returned unchanged. A request
that may have reached an owner that then stopped answering is never re-sent (no double send).

Reads (``routing="read"``) are forwarded while the owner answers, and otherwise served here
from the shared store; they never trigger a reclaim.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from wsmanager.core.errors import (
    InvalidArgument,
    NotFound,
    NotOwner,
    OwnerUnreachable,
    Unavailable,
)
from wsmanager.core.model import ConnectionRecord, ConnectionStatus
from wsmanager.core.ownership import Liveness, check_token, liveness
from wsmanager.holder.discovery import PeerDirectory
from wsmanager.holder.manager import ConnectionManager
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.holder.peers import (
    FORWARDED_HEADER,
    TOKEN_HEADER,
    PeerAnswer,
    PeerClient,
    PeerUnreachable,
)
from wsmanager.holder.reclaimer import Reclaimer
from wsmanager.holder.routes_common import CORRELATION_ID
from wsmanager.holder.routes_connections import connection_id_of
from wsmanager.reclaim import ClaimOutcome

__all__ = ["NEEDS_SOCKET", "OwnerRouter", "Route", "fencing_token_of"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Commands that need an open socket: after adopting, wait (bounded) for it to open.
NEEDS_SOCKET = frozenset({"Send", "SendRaw", "StartPublish"})
_OPENING = frozenset({ConnectionStatus.CONNECTING, ConnectionStatus.RECONNECTING})
_SHOULD_BE_OPEN = _OPENING | {ConnectionStatus.CONNECTED}
_MAX_ROUNDS = 4
#: Seconds a forwarded command may take on top of its own timeout (network, queueing).
_SLACK = 5.0


@dataclass(frozen=True, slots=True)
class Route:
    """Where a connection's commands go: its owner's endpoint, at the token routed on."""

    endpoint: str
    fencing_token: int
    owner: str


def fencing_token_of(request: web.Request) -> int | None:
    """The fencing token a caller names in :data:`TOKEN_HEADER` (R3), if any.

    Raises:
        InvalidArgument: not a non-negative integer.
    """
    raw = request.headers.get(TOKEN_HEADER)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise InvalidArgument(f"{TOKEN_HEADER} must be a non-negative integer")
    return int(raw)


class OwnerRouter:
    """Decides where an owner-only command runs, and forwards it there (module doc)."""

    def __init__(
        self,
        manager: ConnectionManager,
        directory: PeerDirectory,
        peers: PeerClient,
        reclaimer: Reclaimer,
        *,
        metrics: HolderMetrics | None = None,
        cache_size: int = 100_000,
        open_wait: float = 5.0,
    ) -> None:
        if cache_size < 1:
            raise InvalidArgument("cache_size must be >= 1")
        self.manager = manager
        self.ownership = manager.ownership
        self.directory = directory
        self.peers = peers
        self.reclaimer = reclaimer
        self.metrics = metrics
        self.cache_size = cache_size
        self.open_wait = open_wait
        self._routes: OrderedDict[str, Route] = OrderedDict()
        settings = manager.settings
        self._send_default = settings.default_timeout_ms / 1000

    def __repr__(self) -> str:
        return f"OwnerRouter(cached_routes={len(self._routes)})"

    # -- the request path --------------------------------------------------------------------

    async def handle(
        self, request: web.Request, handler: Handler, *, operation: str, read_only: bool
    ) -> web.StreamResponse:
        """Run ``handler`` here, or forward the request to the owner (module doc)."""
        connection_id = connection_id_of(request)
        presented = fencing_token_of(request)
        forwarded = FORWARDED_HEADER in request.headers
        if self._held_here(connection_id, presented):
            return await handler(request)
        route = None if forwarded else self._cached(connection_id, presented)
        unreachable: str | None = None
        refused = False
        for _ in range(_MAX_ROUNDS):
            if route is None:
                route = await self._resolve(
                    request,
                    connection_id,
                    presented,
                    forwarded=forwarded,
                    operation=operation,
                    read_only=read_only,
                    unreachable=unreachable,
                )
                if route is None:
                    return await handler(request)
            try:
                answer = await self._forward(request, route, operation)
            except OwnerUnreachable as exc:
                self._forget(connection_id)
                if not isinstance(exc, PeerUnreachable) or exc.sent:
                    # It may have been acted on: never sent twice (R3: UNAVAILABLE, retryable).
                    raise OwnerUnreachable(
                        f"owner {route.owner} of connection {connection_id} did not answer; "
                        "retry later",
                        connection_id=connection_id,
                        owner=route.owner,
                    ) from exc
                if read_only:
                    return await handler(request)
                unreachable, route = route.endpoint, None
                continue
            if answer.status == 412 and not refused:
                # R3: not the owner at that token (a stale cache entry, or ownership moved):
                # drop the route, re-read the record once, route again.
                refused = True
                self._forget(connection_id)
                route = None
                continue
            return web.Response(
                status=answer.status,
                body=answer.body,
                headers={"Content-Type": answer.content_type},
            )
        raise Unavailable(
            f"ownership of connection {connection_id} kept changing; retry",
            connection_id=connection_id,
        )

    def _held_here(self, connection_id: str, presented: int | None) -> bool:
        """R3 + R8 fast path: my socket, my current token, my lease fresh. No store read."""
        conn = self.manager.connections.get(connection_id)
        if conn is None or conn.lost or not self.manager.gate.may_act():
            return False
        if presented is None or presented == conn.token:
            return True
        if presented < conn.token:
            raise NotOwner(
                connection_id,
                self.ownership.me.instance_id,
                conn.token,
                f"stale fencing token {presented} for connection {connection_id}; current "
                f"token {conn.token} held by {self.ownership.me.instance_id}",
            )
        return False  # a newer token than mine: let the store say who owns it

    async def _resolve(
        self,
        request: web.Request,
        connection_id: str,
        presented: int | None,
        *,
        forwarded: bool,
        operation: str,
        read_only: bool,
        unreachable: str | None,
    ) -> Route | None:
        """Read the record and decide: ``None`` = act here (after adopting or reclaiming it)."""
        me = self.ownership.me
        for _ in range(_MAX_ROUNDS):
            stored = await self.ownership.get(connection_id)  # R5: StoreUnavailable -> 503
            if stored is None:
                raise NotFound(f"Connection not found: {connection_id}")
            record = stored.record
            check_token(record, presented)  # R3: a stale token is refused, naming the owner
            if record.owner == me:
                if not read_only:
                    await self._hold(record, operation)
                return None
            owner_id = record.owner.instance_id if record.owner else None
            if forwarded:
                self._miss("not_owned")
                raise NotOwner(
                    connection_id,
                    owner_id,
                    record.fencing_token,
                    f"connection {connection_id} was forwarded to {me.instance_id}, which does "
                    f"not own it; current owner: {owner_id or 'nobody (released)'}, token "
                    f"{record.fencing_token}",
                )
            owner = record.owner
            if owner is not None:
                beat = await self.directory.heartbeat_of(owner)
                state = liveness(owner, beat, self.ownership.clock.now(), self.ownership.policy)
                endpoint = beat.endpoint if beat is not None and beat.owner == owner else ""
                if state is not Liveness.DEAD and endpoint and endpoint != unreachable:
                    self._miss("not_owned")
                    return self._remember(
                        connection_id, Route(endpoint, record.fencing_token, owner.instance_id)
                    )
                if state is Liveness.ALIVE:
                    # R3/R6: alive but not answering (or no endpoint): never reclaimed.
                    raise OwnerUnreachable(
                        f"owner {owner.instance_id} of connection {connection_id} is alive but "
                        "did not answer; retry later",
                        connection_id=connection_id,
                        owner=owner.instance_id,
                    )
            if read_only:
                return None  # a read is served from the shared store; it never reclaims
            self._miss("lapsed")
            claim = await self.reclaimer.reclaim_one(
                connection_id,
                correlation_id=request[CORRELATION_ID],
                adopt=operation != "Disconnect",  # no socket opened just to be closed
            )
            outcome = claim.outcome
            if outcome is ClaimOutcome.TAKEN:
                self._forget(connection_id)
                if operation in NEEDS_SOCKET:
                    await self._await_open(connection_id)
                return None
            if outcome is ClaimOutcome.MINE and claim.record is not None:
                await self._hold(claim.record, operation)
                return None
            if outcome is ClaimOutcome.NOT_FOUND:
                raise NotFound(f"Connection not found: {connection_id}")
            if outcome is ClaimOutcome.NOT_STALE:
                raise Unavailable(
                    f"connection {connection_id} is owned by {owner_id}, which is not alive; "
                    "it can be reclaimed once unrenewed for STALE_CONNECTION_TTL_SECONDS (R6); "
                    "retry later",
                    connection_id=connection_id,
                    owner=owner_id,
                )
            if outcome is ClaimOutcome.DEFERRED:
                raise Unavailable(
                    f"connection {connection_id} is owned by {owner_id}, which looks dead, but "
                    "this holder judges no peer dead yet (the state store failed recently, or "
                    "it has just started: R5); retry later",
                    connection_id=connection_id,
                    owner=owner_id,
                )
            if outcome is ClaimOutcome.CONFLICT:
                break
            # OWNER_ALIVE: the owner came back, or another reclaimer won it: read again.
        raise Unavailable(
            f"ownership of connection {connection_id} kept changing; retry",
            connection_id=connection_id,
        )

    async def _hold(self, record: ConnectionRecord, operation: str) -> None:
        """A record of mine with no socket here that should be open: adopt it now (R7), e.g.
        a reclaim made on my behalf whose adopt call has not arrived."""
        manager = self.manager
        held = manager.connections.get(record.id)
        if held is not None and not held.lost:
            return
        if (
            operation == "Disconnect"
            or not record.auto_reconnect
            or record.status not in _SHOULD_BE_OPEN
            or record.id in manager.orphans
            or not manager.gate.may_act()
        ):
            return  # the manager answers (NotConnected, SelfFenced, ...) as it would anyway
        await manager.adopt(record)
        if self.metrics is not None:
            self.metrics.adoptions.labels(source="lazy").inc()
        if operation in NEEDS_SOCKET:
            await self._await_open(record.id)

    async def _await_open(self, connection_id: str) -> None:
        """Give an adopted socket a bounded moment to open, so the command that caused the
        adoption does not meet it still CONNECTING (the manager answers either way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.open_wait
        while loop.time() < deadline:
            conn = self.manager.connections.get(connection_id)
            if conn is None or conn.lost or conn.status not in _OPENING:
                return
            await asyncio.sleep(0.01)

    # -- forwarding ----------------------------------------------------------------------------

    async def _forward(self, request: web.Request, route: Route, operation: str) -> PeerAnswer:
        body = await request.read()
        try:
            answer = await self.peers.forward(
                route.endpoint,
                method=request.method,
                raw_path=request.raw_path,
                headers=request.headers,
                body=body,
                correlation_id=request[CORRELATION_ID],
                fencing_token=route.fencing_token,
                timeout=self._timeout(operation, body),
            )
        except OwnerUnreachable:
            self._count_forward(operation, "unreachable")
            raise
        status = answer.status
        outcome = "ok" if status < 400 else "refused" if status == 412 else "error"
        self._count_forward(operation, outcome)
        return answer

    def _timeout(self, operation: str, body: bytes) -> float:
        """A forwarded Send may wait for its reply up to its own ``timeout_ms``."""
        seconds = self._send_default
        if operation == "Send":
            try:
                given = json.loads(body).get("timeout_ms")
            except (ValueError, AttributeError, UnicodeDecodeError):
                given = None  # the owner refuses the body; the default bounds the wait
            if isinstance(given, int) and not isinstance(given, bool) and given > 0:
                seconds = given / 1000
        return max(seconds, 25.0) + _SLACK

    # -- bookkeeping -----------------------------------------------------------------------------

    def _cached(self, connection_id: str, presented: int | None) -> Route | None:
        route = self._routes.get(connection_id)
        if route is None or (presented is not None and presented != route.fencing_token):
            return None
        self._routes.move_to_end(connection_id)
        self._miss("not_owned")
        return route

    def _remember(self, connection_id: str, route: Route) -> Route:
        self._routes[connection_id] = route
        self._routes.move_to_end(connection_id)
        if len(self._routes) > self.cache_size:
            self._routes.popitem(last=False)
        return route

    def _forget(self, connection_id: str) -> None:
        self._routes.pop(connection_id, None)

    def _miss(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.ownership_misses.labels(reason=reason).inc()

    def _count_forward(self, operation: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.forwards.labels(method=operation, outcome=outcome).inc()
