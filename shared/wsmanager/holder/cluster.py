"""Many holders as one system: discovery (R4), forwarding (R3), reclaim (R5-R7), hand-off (R11).

:class:`Cluster` puts together what one holder needs to work beside its peers, and runs the
background loops (discovery, reclaim sweep). :func:`wsmanager.holder.bootstrap.open_components`
builds it beside the manager and stops it in this order:

1. :meth:`Cluster.stop`: the loops end first, so nothing is reclaimed while draining;
2. the manager stops (``drain``: release every record ownerless, token + 1, close the sockets
   with 1001 Going Away, delete the heartbeat: R11);
3. :meth:`Cluster.after_stop` (``drain`` only): **hand-off**. The released records are taken
   over on behalf of the live peers, least loaded first, in equal shares (the same CAS sweep a
   reclaimer runs, with the peer as the new owner, R7), and each peer is asked to adopt its
   share (``POST /internal/v1/adopt``), so the sockets are re-opened at once rather than at the
   peers' next sweep or after any TTL. Best effort and bounded in time: whatever is left is
   ownerless, and the peers' own sweeps take it (R11: released records are reclaimable at once).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from typing import Any

from wsmanager.config import Settings
from wsmanager.core import keys
from wsmanager.holder.discovery import PeerDirectory
from wsmanager.holder.forwarding import OwnerRouter
from wsmanager.holder.manager import ConnectionManager
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.holder.peers import PeerClient, PeerUnreachable
from wsmanager.holder.reclaimer import Reclaimer
from wsmanager.indexes import read_owner_index
from wsmanager.reclaim import sweep

__all__ = ["HANDOFF_TIMEOUT", "Cluster"]

log = logging.getLogger("wsmanager.holder.cluster")

#: Seconds the drain hand-off may take (inside a pod's termination grace period).
HANDOFF_TIMEOUT = 15.0
#: Seconds the background loops get to end once cancelled.
STOP_TIMEOUT = 5.0


class Cluster:
    """Discovery, reclaimer and owner router of one holder (module doc)."""

    def __init__(
        self,
        settings: Settings,
        manager: ConnectionManager,
        peers: PeerClient,
        *,
        metrics: HolderMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.peers = peers
        self.metrics = metrics
        self.directory = PeerDirectory(
            manager.ownership, interval=settings.discovery_interval, metrics=metrics
        )
        self.reclaimer = Reclaimer(
            manager, interval=settings.reclaim_interval, metrics=metrics, rng=rng
        )
        self.router = OwnerRouter(manager, self.directory, peers, self.reclaimer, metrics=metrics)
        self._tasks: list[asyncio.Task[Any]] = []

    def __repr__(self) -> str:
        return f"Cluster({self.manager.instance_id}, {self.directory!r})"

    async def start(self) -> None:
        """A first discovery (best effort), then the discovery and reclaim loops."""
        try:
            await self.directory.refresh()
        except Exception as exc:  # R5: a failing store at start-up says nothing about peers
            _log(logging.WARNING, "first peer discovery failed: %s: %s", type(exc).__name__, exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.directory.run(), name="wsm-discovery"),
            loop.create_task(self.reclaimer.run(), name="wsm-reclaim"),
        ]

    async def stop(self) -> None:
        """End the loops (first thing at shutdown: no reclaim while draining)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in stuck:  # never hang a shutdown on a loop that ignores its cancel
                _log(logging.ERROR, "%s did not stop within %gs", task.get_name(), STOP_TIMEOUT)

    async def after_stop(self, drain: bool) -> None:
        """After the manager has stopped: hand the released records to peers (``drain``)."""
        if not drain:
            return
        try:
            async with asyncio.timeout(HANDOFF_TIMEOUT):
                await self.hand_off()
        except Exception as exc:  # peers take what is left at their next sweep (R11)
            _log(logging.WARNING, "drain hand-off incomplete: %s: %s", type(exc).__name__, exc)

    async def hand_off(self) -> dict[str, list[str]]:
        """R11 + R7: give ownerless records to live peers in equal shares and have them adopt
        them. Returns the ids each peer took, by instance id."""
        ownership = self.manager.ownership
        me = ownership.me
        live = await ownership.live_peers()  # fresh, not the cached view
        targets = sorted(
            (b for i, b in live.items() if i != me.instance_id and b.endpoint),
            key=lambda b: (b.connection_count, b.instance_id),
        )
        unowned = await read_owner_index(ownership.store, keys.owner_index_key(keys.UNOWNED))
        handed: dict[str, list[str]] = {}
        if not targets or not unowned.value:
            return handed
        share = math.ceil(len(unowned.value) / len(targets))
        correlation_id = f"drain-{uuid.uuid4().hex}"
        for position, beat in enumerate(targets):
            last = position == len(targets) - 1
            # Released records only: a drain judges no peer dead (R5, R11).
            report = await sweep(
                ownership, new_owner=beat.owner, limit=None if last else share, released_only=True
            )
            ids = [r.id for r in report.taken]
            self.manager.audit_record(
                "reclaim_sweep",
                None,
                correlation_id,
                trigger="drain",
                new_owner=beat.instance_id,
                examined=report.examined,
                taken=len(ids),
                conflicts=report.conflicts,
                dead_instances=report.dead_instances,
                pruned=report.pruned,
            )
            if not ids:
                continue
            handed[beat.instance_id] = ids
            try:
                answer = await self.peers.adopt(
                    beat.endpoint,
                    ids,
                    correlation_id=correlation_id,
                    previous_owners={i: report.previous_owners.get(i) for i in ids},
                )
                if answer.status >= 300:
                    status = answer.status
                    _log(logging.WARNING, "%s refused adopt: HTTP %d", beat.instance_id, status)
            except PeerUnreachable as exc:  # it re-opens them itself (reconcile, next sweep)
                _log(logging.WARNING, "adopt on %s failed: %s", beat.instance_id, exc)
        _log(
            logging.INFO,
            "drain: handed %d connections to %s",
            sum(map(len, handed.values())),
            ", ".join(handed) or "nobody",
        )
        return handed


def _log(level: int, message: str, *args: object) -> None:
    try:
        log.log(level, message, *args)
    except Exception:  # background logging is fire-and-forget
        pass
