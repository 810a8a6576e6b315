"""Peer discovery (R4): a view of the other holders, refreshed every
``INSTANCE_DISCOVERY_INTERVAL_SECONDS``.

Each holder's heartbeat (written by :class:`~wsmanager.holder.lease.LeaseKeeper`) names its
endpoint, ``http://{WSM_HTTP_HOST}:{HttpPort}``. The view keeps every heartbeat listed in the
instance index (:attr:`PeerDirectory.known`, for endpoints) and the live ones
(:attr:`PeerDirectory.live`, fresh by the core's rule; exported as ``wsm_live_peers``).

The view only ever saves reads: :meth:`PeerDirectory.heartbeat_of` answers from it while the
cached heartbeat still proves the owner alive *now*, and reads the store otherwise. Deciding
that a peer is dead (to reclaim from it) is never done on a cached view: the reclaim reads the
heartbeat again (:func:`wsmanager.reclaim.reclaim_one`). A failing store keeps the last view
(R5: a store outage is not evidence that peers died).

With heartbeats disabled (interval 0) nobody is known alive (``live`` stays empty); the
registration record each holder writes once at start still names its endpoint.
"""

from __future__ import annotations

import asyncio
import logging

from wsmanager.core import keys
from wsmanager.core.errors import InvalidArgument
from wsmanager.core.model import Heartbeat, Owner
from wsmanager.core.ownership import Liveness, liveness
from wsmanager.holder.cancel import raise_if_cancelled
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.ownership import OwnershipService

__all__ = ["PeerDirectory"]

log = logging.getLogger("wsmanager.holder.discovery")


class PeerDirectory:
    def __init__(
        self,
        ownership: OwnershipService,
        *,
        interval: float,
        metrics: HolderMetrics | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("discovery interval must be > 0")
        self.ownership = ownership
        self.interval = interval
        self.metrics = metrics
        #: Every heartbeat seen at the last refresh (or read since), by instance id.
        self.known: dict[str, Heartbeat] = {}
        #: The ones that were fresh at the last refresh (me included when mine is).
        self.live: dict[str, Heartbeat] = {}
        self.refreshed_at: float | None = None

    def __repr__(self) -> str:
        return f"PeerDirectory(live={sorted(self.live)})"

    async def refresh(self) -> dict[str, Heartbeat]:
        """Read every heartbeat now; the live ones. Raises StoreUnavailable (view kept)."""
        beats = await self.ownership.heartbeats()
        now = self.ownership.clock.now()
        policy = self.ownership.policy
        self.known = beats
        self.live = {
            i: b for i, b in beats.items() if liveness(b.owner, b, now, policy) is Liveness.ALIVE
        }
        self.refreshed_at = now
        if self.metrics is not None:
            self.metrics.live_peers.set(len(self.live))
        return self.live

    async def run(self) -> None:
        """Refresh every ``interval`` seconds, forever (errors logged, view kept: R5)."""
        while True:
            raise_if_cancelled()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled(exc)
                self.ownership.note_trouble()  # R5: peers' staleness proves nothing for now
                try:
                    log.warning("peer discovery failed (view kept): %r", exc)
                except Exception:  # background logging is fire-and-forget
                    pass
            await asyncio.sleep(self.interval)

    def peers(self) -> list[Heartbeat]:
        """Live peers other than me, least loaded first (as of the last refresh)."""
        me = self.ownership.me.instance_id
        others = [b for i, b in self.live.items() if i != me and b.endpoint]
        return sorted(others, key=lambda b: (b.connection_count, b.instance_id))

    async def heartbeat_of(self, owner: Owner) -> Heartbeat | None:
        """The heartbeat stored for ``owner``'s instance id: from the view while it proves that
        owner alive now (or, heartbeats off, names it), else read from the store."""
        cached = self.known.get(owner.instance_id)
        if cached is not None and cached.owner == owner:
            state = liveness(owner, cached, self.ownership.clock.now(), self.ownership.policy)
            if state is not Liveness.DEAD:
                return cached
        raw = await self.ownership.store.get(keys.heartbeat_key(owner.instance_id))
        if raw is None:
            self.known.pop(owner.instance_id, None)
            return None
        try:
            beat = Heartbeat.from_json(raw.value)
        except InvalidArgument:
            return None
        self.known[beat.instance_id] = beat
        return beat
