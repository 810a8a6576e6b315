"""The lease keeper: heartbeats (R4), record renewal (R6, R12) and re-confirmation (R8).

Every ``interval`` seconds it writes this instance's heartbeat (when heartbeats are on and it is
asked to keep the lease), and every ``renew_every`` seconds it renews the records of the
connections held here. Renewal reports connections that are no longer mine; the manager drops
them at once, without sending or publishing anything more (R8).

Whenever the fence gate has seen a lapse, the next tick re-reads the records (``reconfirm``),
has the lost ones dropped, and only then reopens the gate. Re-confirmation runs even when
``keep_lease`` is off (another component writes the heartbeats), so the gate can reopen.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Collection

from wsmanager.core.errors import SelfFenced
from wsmanager.holder.cancel import raise_if_cancelled
from wsmanager.holder.fencing import FenceGate
from wsmanager.ownership import OwnershipService, RenewReport

__all__ = ["LeaseKeeper"]

log = logging.getLogger("wsmanager.holder.lease")


class LeaseKeeper:
    def __init__(
        self,
        ownership: OwnershipService,
        gate: FenceGate,
        *,
        held: Callable[[], Collection[str]],
        apply: Callable[[RenewReport], Awaitable[None]],
        superseded: Callable[[], Awaitable[None]],
        keep_lease: bool = True,
        interval: float | None = None,
    ) -> None:
        policy = ownership.policy
        self._ownership = ownership
        self._gate = gate
        self._held = held
        self._apply = apply
        self._superseded = superseded
        self.keep_lease = keep_lease
        ttl = ownership.record_ttl or math.inf
        #: R6/R12: renew well inside the shorter of the stale TTL and the store's GC TTL.
        self.renew_every = min(policy.stale_connection_ttl, ttl) / 3
        if interval is None:
            interval = policy.heartbeat_interval if policy.heartbeats_enabled else self.renew_every
        # Tick at least as often as renewals are due, and within the renew deadline (R8).
        self.interval = min(interval, self.renew_every, policy.effective_renew_deadline / 2)
        self._last_renew: float | None = None

    def __repr__(self) -> str:
        return f"LeaseKeeper(interval={self.interval:g}s, keep_lease={self.keep_lease})"

    async def establish(self) -> None:
        """Start-up: register (heartbeat), confirm my records, open the gate.

        Raises:
            StoreUnavailable: the store is failing; the holder must not serve yet.
            SelfFenced: a newer incarnation of my instance id is running (R1).
        """
        if self.keep_lease:
            # R4: with heartbeats off (interval 0) this one record is written once, as the
            # endpoint registration peers forward to (R3); it is no liveness signal: the core
            # ignores heartbeats then (Liveness.UNKNOWN) and record age alone decides (R6).
            await self._ownership.heartbeat(len(self._held()))
        else:
            await self._ownership.register()
        await self._reconfirm()

    async def run(self) -> None:
        while True:
            raise_if_cancelled()
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failing store must not end the keeper (R5)
                raise_if_cancelled(exc)
                self._ownership.note_trouble()  # R5: peers' staleness proves nothing for now
                _log(logging.WARNING, "lease keeper tick failed: %s: %s", type(exc).__name__, exc)

    async def tick(self) -> None:
        ownership, gate = self._ownership, self._gate
        gate.may_act()  # look before the heartbeat moves the renewal time: catches a pause
        if self.keep_lease and ownership.policy.heartbeats_enabled:
            try:
                await ownership.heartbeat(len(self._held()))
            except SelfFenced:
                _log(logging.ERROR, "superseded by a newer incarnation; dropping every socket")
                await self._superseded()
                return
        now = ownership.clock.now()
        renew_due = self._last_renew is None or now - self._last_renew >= self.renew_every
        if gate.needs_reconfirm or (self.keep_lease and renew_due):
            await self._reconfirm()

    async def _reconfirm(self) -> None:
        ownership = self._ownership
        started = ownership.clock.now()
        report = await ownership.reconfirm(self._held())
        self._last_renew = started
        await self._apply(report)
        if ownership.superseded:
            await self._superseded()
            return
        self._gate.confirmed(ownership.last_renewal_at)


def _log(level: int, message: str, *args: object) -> None:
    try:
        log.log(level, message, *args)
    except Exception:  # background logging is fire-and-forget
        pass
