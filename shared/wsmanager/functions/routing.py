"""Where a command goes: a live holder chosen by load (connect, list, get), or the owner of the
connection named in the command (everything else, R3), reclaiming first when that owner is dead.

* **Load.** Live holders come from their heartbeats (R4). The least ``connection_count`` wins,
  counting the connects this process routed to a holder since its last heartbeat, so a burst of
  connects between two heartbeats spreads out instead of piling onto one holder. Ties are
  broken at random.
* **Owner.** The record names the owner; its heartbeat names the endpoint. Routes are cached by
  connection id with the fencing token they were read at, and a cached call carries that token
  (``X-Wsm-Fencing-Token``): the holder refuses a stale token with 412 (R3), which drops the
  entry and re-reads. So the steady state costs no store read at all, and a token change
  (every change of owner, R2) can never send a command to a former owner's sockets.
* **Dead owner.** When the owner's heartbeat is stale (R4/R5, by the core's rules) or the record
  was released (R11), the router runs a reclaim sweep (R7) whose new owner is a live holder
  chosen by load, asks that holder to adopt what it got, and routes to the new owner. If the
  record is not reclaimable yet (R6: renewed too recently) the answer is 503, retryable.
* **Unreachable owner.** If the owner does not answer but its heartbeat is fresh, the answer is
  OwnerUnreachable (503): an alive owner is never reclaimed (R6).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from wsmanager.core import keys
from wsmanager.core.errors import InvalidArgument, OwnerUnreachable, Unavailable
from wsmanager.core.model import ConnectionRecord, ConnectionStatus, Heartbeat, Owner
from wsmanager.core.ownership import Liveness, liveness
from wsmanager.functions.client import HolderClient, HolderUnreachable
from wsmanager.functions.commands import HolderCall
from wsmanager.functions.dedupe import Answer
from wsmanager.holder.audit import AuditLog
from wsmanager.ownership import OwnershipService
from wsmanager.reclaim import SweepReport, sweep

__all__ = ["ReclaimOutcome", "Router"]

log = logging.getLogger("wsmanager.functions")

#: R7: at most this many takeovers per sweep started by a function; the rest wait a sweep.
RECLAIM_LIMIT = 1000
_OPENING = frozenset({ConnectionStatus.CONNECTING, ConnectionStatus.RECONNECTING})


@dataclass(slots=True)
class ReclaimOutcome:
    """One sweep run by a function: what was taken, by whom, and what the adopter said."""

    report: SweepReport | None
    target: Heartbeat | None
    adopt: str = "none"  # none | adopted | deferred (old holder: next sweep) | failed
    taken: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        report = self.report
        return {
            "new_owner": self.target.instance_id if self.target else None,
            "dead_instances": report.dead_instances if report else [],
            "examined": report.examined if report else 0,
            "taken": self.taken,
            "conflicts": report.conflicts if report else 0,
            "pruned": report.pruned if report else 0,
            "adopt": self.adopt,
        }


class Router:
    """Routes holder calls (see the module doc). One per function process."""

    def __init__(
        self,
        ownership: OwnershipService,
        client: HolderClient,
        *,
        audit: AuditLog | None = None,
        cache_size: int = 4096,
        adopt_wait: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if cache_size < 1:
            raise InvalidArgument("cache_size must be >= 1")
        self.ownership = ownership
        self.client = client
        self.audit = audit or AuditLog()
        self.cache_size = cache_size
        self.adopt_wait = adopt_wait
        #: connection id -> (fencing token, owner endpoint) as last read from the store.
        self._routes: OrderedDict[str, tuple[int, str]] = OrderedDict()
        # instance id -> (heartbeat time it applies to, connects routed there since)
        self._assigned: dict[str, tuple[float, int]] = {}
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"Router(cached_routes={len(self._routes)})"

    # -- load ------------------------------------------------------------------------------

    async def live_holders(self) -> list[Heartbeat]:
        """Live holders, least loaded first (R4 heartbeats plus connects routed since)."""
        live = await self.ownership.live_peers()
        for gone in self._assigned.keys() - live.keys():
            del self._assigned[gone]
        beats = list(live.values())
        self._rng.shuffle(beats)  # random order among equals: the sort below is stable
        return sorted(beats, key=self._load)

    def _load(self, beat: Heartbeat) -> int:
        seen_at, extra = self._assigned.get(beat.instance_id, (beat.last_seen_at, 0))
        return beat.connection_count + (extra if seen_at == beat.last_seen_at else 0)

    def _count_connect(self, beat: Heartbeat) -> None:
        seen_at, extra = self._assigned.get(beat.instance_id, (beat.last_seen_at, 0))
        extra = extra + 1 if seen_at == beat.last_seen_at else 1
        self._assigned[beat.instance_id] = (beat.last_seen_at, extra)

    async def to_any(self, call: HolderCall, correlation_id: str) -> Answer:
        """Make ``call`` on the least loaded live holder, trying the next one only while it
        is certain no holder received the request (reads may always move on)."""
        holders = await self.live_holders()
        if not holders:
            raise Unavailable("no live holder (no fresh heartbeat in the state store)")
        last: HolderUnreachable | None = None
        for beat in holders:
            try:
                answer = await self.client.call(beat.endpoint, call, correlation_id)
            except HolderUnreachable as exc:
                last = exc
                if exc.sent and call.method != "GET":
                    raise
                continue
            if call.path == "/v1/connect" and answer.status < 300:
                self._count_connect(beat)
            return answer
        assert last is not None
        raise last

    # -- owner -----------------------------------------------------------------------------

    async def to_owner(self, call: HolderCall, correlation_id: str) -> Answer:
        """Make ``call`` on the owner of ``call.connection_id`` (R3), reclaiming a dead one.

        Raises:
            NotFound: no such connection.
            OwnerUnreachable: the owner is alive but does not answer.
            Unavailable: the owner is dead and the record is not reclaimable yet, or no
                holder is alive to take it; the store is failing.
        """
        assert call.connection_id is not None
        cached = self._routes.get(call.connection_id)
        if cached is not None:  # hot path: no store read, the owner checks the token (R3)
            token, endpoint = cached
            try:
                answer = await self.client.call(endpoint, call, correlation_id, token=token)
            except HolderUnreachable:
                answer = None
            if answer is not None and answer.status != 412:
                return answer
            self._routes.pop(call.connection_id, None)  # stale or gone: re-read below
        for attempt in (1, 2):
            stored = await self.ownership.require(call.connection_id)
            record = stored.record
            endpoint = await self._endpoint(record, correlation_id)
            try:
                answer = await self.client.call(endpoint, call, correlation_id)
            except HolderUnreachable as exc:
                self._forget(record)
                if attempt == 2 or await self._alive(record):
                    raise OwnerUnreachable(
                        f"owner of connection {record.id} did not answer; retry later",
                        connection_id=record.id,
                    ) from exc
                continue  # dead now: the next round reclaims
            if answer.status == 412 and attempt == 1:
                # R3: the holder says it is not the owner at this token: re-read and re-route.
                self._forget(record)
                continue
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget(self, record: ConnectionRecord) -> None:
        self._routes.pop(record.id, None)

    async def _heartbeat(self, owner: Owner) -> Heartbeat | None:
        raw = await self.ownership.store.get(keys.heartbeat_key(owner.instance_id))
        if raw is None:
            return None
        try:
            return Heartbeat.from_json(raw.value)
        except InvalidArgument:
            return None

    def _state(self, owner: Owner, beat: Heartbeat | None) -> Liveness:
        now = self.ownership.clock.now()
        return liveness(owner, beat, now, self.ownership.policy)

    async def _alive(self, record: ConnectionRecord) -> bool:
        if record.owner is None:
            return False
        beat = await self._heartbeat(record.owner)
        return self._state(record.owner, beat) is not Liveness.DEAD

    async def _endpoint(self, record: ConnectionRecord, correlation_id: str) -> str:
        key = (record.id, record.fencing_token)
        cached = self._routes.get(record.id)
        if cached is not None and cached[0] == record.fencing_token:
            self._routes.move_to_end(record.id)
            return cached[1]
        owner = record.owner
        if owner is not None:
            beat = await self._heartbeat(owner)
            state = self._state(owner, beat)
            # UNKNOWN: heartbeats are off (R4), liveness is not known; the heartbeat record
            # still names the endpoint, and record age alone decides reclaims (R6).
            if beat is not None and beat.owner == owner and state is not Liveness.DEAD:
                return self._remember(key, beat.endpoint)
        outcome = await self.reclaim(correlation_id)
        if record.id in outcome.taken and outcome.adopt == "adopted":
            await self._await_socket(record.id)
        again = (await self.ownership.require(record.id)).record
        if again.owner is not None and again.owner != owner:
            beat = await self._heartbeat(again.owner)
            if beat is not None and self._state(again.owner, beat) is not Liveness.DEAD:
                return self._remember((again.id, again.fencing_token), beat.endpoint)
        who = owner.instance_id if owner else "nobody (released)"
        reason = "no live holder can take it" if outcome.target is None else "not reclaimable yet"
        raise Unavailable(
            f"connection {record.id} is owned by {who}, which is not alive, and is {reason} "
            "(R6); retry later",
            connection_id=record.id,
        )

    async def _await_socket(self, connection_id: str) -> None:
        """After an adoption, give the new owner a moment to re-open the socket, so the command
        that triggered the reclaim does not meet a socket still CONNECTING (409). Bounded: a
        slow server is the owner's business; the caller then gets the owner's answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.adopt_wait
        while loop.time() < deadline:
            stored = await self.ownership.get(connection_id)
            if stored is None or stored.record.status not in _OPENING:
                return
            await asyncio.sleep(0.05)

    def _remember(self, key: tuple[str, int], endpoint: str) -> str:
        connection_id, token = key
        self._routes[connection_id] = (token, endpoint)
        if len(self._routes) > self.cache_size:
            self._routes.popitem(last=False)
        return endpoint

    # -- reclaim (R7) ----------------------------------------------------------------------

    async def reclaim(self, correlation_id: str, *, limit: int = RECLAIM_LIMIT) -> ReclaimOutcome:
        """One sweep with a live holder chosen by load as the new owner, then adoption.

        Safe to run concurrently with the holders' own sweeps: every takeover is a CAS (R7).

        Raises:
            StoreUnavailable: the store is failing; nothing was taken (R5).
        """
        holders = await self.live_holders()
        if not holders:
            return ReclaimOutcome(None, None)
        target = holders[0]
        report = await sweep(self.ownership, new_owner=target.owner, limit=limit)
        outcome = ReclaimOutcome(report, target, taken=[r.id for r in report.taken])
        if outcome.taken:
            outcome.adopt = await self._adopt(target, outcome.taken, correlation_id)
        self.audit.record(
            "reclaim_sweep",
            instance_id=self.ownership.me.instance_id,
            connection_id=None,
            correlation_id=correlation_id,
            **outcome.to_json(),
        )
        return outcome

    async def _adopt(self, target: Heartbeat, ids: Sequence[str], correlation_id: str) -> str:
        try:
            answer = await self.client.adopt(target.endpoint, ids, correlation_id)
        except HolderUnreachable as exc:
            log.warning("adopt on %s failed: %s", target.instance_id, exc)
            return "failed"
        if answer.status < 300:
            return "adopted"
        if answer.status in (404, 405):
            # A holder without the adopt endpoint opens them on its next sweep.
            return "deferred"
        log.warning("adopt on %s answered HTTP %d", target.instance_id, answer.status)
        return "failed"
