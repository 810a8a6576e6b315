"""The holder's reclaimer (R5-R7): the periodic sweep, the lazy reclaim of one record, adoption.

* **Sweep.** Every ``RECLAIM_INTERVAL_SECONDS`` (the first one after a random fraction of the
  interval, then every 0.8-1.0 intervals, so holders started together do not sweep in step) it
  runs :func:`wsmanager.reclaim.sweep` with this holder as the new owner. Takeovers go in chunks
  with a jittered pause between them (R7: no reconnect storm), yet 1,000 records take well under
  a second, so a dead peer's connections are re-owned within stale threshold + one interval.
* **Never while the store fails (R5)** nor **while fenced (R8)**: a sweep that raises (e.g.
  StoreUnavailable) is logged and counted, and the next interval tries again; a holder whose
  lease lapsed takes nothing until it has re-confirmed its own records.
* **Taken records** each get a ``reclaimed`` lifecycle event (previous owner, new token) and are
  adopted: with ``auto_reconnect`` their socket is re-opened (at most
  :data:`~wsmanager.holder.runtime.OPEN_CONCURRENCY` opening at once), else they stay
  DISCONNECTED (R7). One audit record per sweep (brief §8).
* **Reconcile.** After each sweep, records this incarnation owns that no socket is held for and
  that should be open (a reclaim done on its behalf whose adopt call never arrived) are adopted,
  once they are older than a grace period (so a connect in flight is never opened twice).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from wsmanager.core import keys
from wsmanager.core.errors import Unavailable
from wsmanager.core.model import ConnectionRecord, ConnectionStatus
from wsmanager.holder.cancel import raise_if_cancelled
from wsmanager.holder.manager import ConnectionManager
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.indexes import read_owner_index
from wsmanager.ownership import chunks
from wsmanager.reclaim import Claim, ClaimOutcome, SweepReport, reclaim_one, sweep

__all__ = ["PACE_SECONDS", "SWEEP_LIMIT", "Reclaimer"]

log = logging.getLogger("wsmanager.holder.reclaim")

#: R7: at most this many takeovers per sweep; the rest wait for the next one.
SWEEP_LIMIT = 5000
#: R7: mean pause between takeover chunks (jittered 0-2x). 1,000 records: 20 chunks, ~0.2 s.
PACE_SECONDS = 0.01
_SHOULD_BE_OPEN = frozenset(
    {ConnectionStatus.CONNECTING, ConnectionStatus.RECONNECTING, ConnectionStatus.CONNECTED}
)


class Reclaimer:
    """One holder's reclaim machinery (module doc)."""

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        interval: float,
        metrics: HolderMetrics | None = None,
        limit: int | None = SWEEP_LIMIT,
        pace: float = PACE_SECONDS,
        reconcile_grace: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("reclaim interval must be > 0")
        self.manager = manager
        self.ownership = manager.ownership
        self.interval = interval
        self.metrics = metrics
        self.limit = limit
        self.pace = pace
        self.reconcile_grace = (
            2 * manager.connect_timeout if reconcile_grace is None else reconcile_grace
        )
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()
        #: Records found owned-but-not-to-be-opened, by id -> token (not re-read each sweep).
        self._settled: dict[str, int] = {}
        self.last: SweepReport | None = None

    def __repr__(self) -> str:
        return f"Reclaimer(interval={self.interval:g}s)"

    # -- the periodic sweep ------------------------------------------------------------------

    async def run(self) -> None:
        """Sweep forever (module doc). Never raises but on cancellation."""
        await asyncio.sleep(self.interval * self._rng.uniform(0.1, 1.0))
        while True:
            await self.sweep_once()
            raise_if_cancelled()
            await asyncio.sleep(self.interval * self._rng.uniform(0.8, 1.0))

    async def _pause(self) -> None:
        await asyncio.sleep(self._rng.uniform(0.0, 2 * self.pace))

    def _may_reclaim(self) -> bool:
        manager = self.manager
        return manager.running and not manager.stopping and manager.gate.may_act()

    async def sweep_once(self) -> SweepReport | None:
        """One sweep, its takeovers adopted and audited; ``None`` when skipped or failed."""
        if not self._may_reclaim():
            return None  # R8: a fenced (or stopping) holder takes nothing
        correlation_id = f"reclaim-{uuid.uuid4().hex}"
        # R5: right after the store failed, a peer's stale heartbeat may be the outage's doing:
        # then only released records (R11) are taken, which needs no judgement of liveness.
        released_only = not self.ownership.trusts_liveness()
        async with self._lock:
            try:
                report = await sweep(
                    self.ownership, limit=self.limit, pace=self._pause, released_only=released_only
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # R5: e.g. StoreUnavailable: nothing taken, try later
                raise_if_cancelled(exc)
                self.ownership.note_trouble()
                self._count("reclaim_sweep_failures")
                _log(logging.WARNING, "reclaim sweep failed: %s: %s", type(exc).__name__, exc)
                return None
            self.last = report
            if self.metrics is not None:
                self.metrics.reclaim_sweeps.inc()
                self.metrics.reclaim_conflicts.inc(report.conflicts)
                if report.taken:
                    self.metrics.reclaim_taken.labels(trigger="sweep").inc(len(report.taken))
            for record in report.taken:
                await self._took(record, report.previous_owners.get(record.id), "sweep")
            self.manager.audit_record(
                "reclaim_sweep",
                None,
                correlation_id,
                trigger="sweep",
                released_only=released_only,
                examined=report.examined,
                taken=len(report.taken),
                conflicts=report.conflicts,
                dead_instances=report.dead_instances,
                pruned=report.pruned,
            )
            if report.taken:
                _log(
                    logging.INFO,
                    "reclaim sweep took %d connections of %s",
                    len(report.taken),
                    ", ".join(report.dead_instances) or "released records",
                )
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled(exc)
                _log(logging.WARNING, "reconcile failed: %s: %s", type(exc).__name__, exc)
            return report

    # -- one record (lazy reclaim, R3) -------------------------------------------------------

    async def reclaim_one(
        self, connection_id: str, *, correlation_id: str, adopt: bool = True
    ) -> Claim:
        """Take one record if R6 allows it now; adopt it (``adopt``) and audit the takeover.

        Raises:
            Unavailable: this holder is fenced or stopping (R8), or the store is failing (R5).
        """
        if not self._may_reclaim():
            raise Unavailable("this holder is re-confirming its ownership; retry shortly")
        released_only = not self.ownership.trusts_liveness()  # R5 (see sweep_once)
        try:
            claim = await reclaim_one(self.ownership, connection_id, released_only=released_only)
        except Unavailable:
            self.ownership.note_trouble()
            raise
        if claim.outcome is ClaimOutcome.CONFLICT:
            self._count("reclaim_conflicts")
        if claim.outcome is not ClaimOutcome.TAKEN or claim.record is None:
            return claim
        previous = claim.previous_owner.instance_id if claim.previous_owner else None
        if self.metrics is not None:
            self.metrics.reclaim_taken.labels(trigger="lazy").inc()
        self.manager.audit_record(
            "reclaim",
            connection_id,
            correlation_id,
            trigger="lazy",
            previous_owner=previous,
            fencing_token=claim.record.fencing_token,
        )
        await self._took(claim.record, previous, "lazy", adopt=adopt)
        return claim

    async def _took(
        self, record: ConnectionRecord, previous: str | None, source: str, *, adopt: bool = True
    ) -> None:
        """R7: announce a takeover and (``adopt``) hold the record: re-open if auto_reconnect."""
        self.manager.emit_record(
            record, "reclaimed", previous_owner=previous, trigger=source, status=record.status.value
        )
        if adopt:
            await self._adopt(record, source)

    async def _adopt(self, record: ConnectionRecord, source: str) -> bool:
        try:
            await self.manager.adopt(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not mine any more, or stopping: nothing to hold
            raise_if_cancelled(exc)
            _log(logging.INFO, "not adopting %s: %s: %s", record.id, type(exc).__name__, exc)
            return False
        self._settled.pop(record.id, None)
        if self.metrics is not None:
            self.metrics.adoptions.labels(source=source).inc()
        return True

    # -- adoption on request (POST /internal/v1/adopt) and reconciliation ----------------------

    async def adopt_ids(
        self, ids: Iterable[str], *, previous_owners: Mapping[str, str | None] | None = None
    ) -> dict[str, list[str]]:
        """Hold every listed record that this incarnation owns and does not hold yet.
        Idempotent: records already held at their current token are left alone."""
        self.manager.require_running()
        previous_owners = previous_owners or {}
        result: dict[str, list[str]] = {
            "adopted": [],
            "held": [],
            "no_socket": [],
            "not_mine": [],
            "not_found": [],
        }
        wanted = list(dict.fromkeys(ids))
        for part in chunks(wanted, 500):
            raw = await self.ownership.store.bulk_get([keys.connection_key(i) for i in part])
            for connection_id in part:
                value = raw.get(keys.connection_key(connection_id))
                if value is None:
                    result["not_found"].append(connection_id)
                    continue
                record = ConnectionRecord.from_json(value.value)
                if record.owner != self.ownership.me:
                    result["not_mine"].append(connection_id)
                    continue
                held = self.manager.connections.get(connection_id)
                if held is not None and not held.lost and held.token == record.fencing_token:
                    result["held"].append(connection_id)
                    continue
                if not (record.auto_reconnect and record.status in _SHOULD_BE_OPEN):
                    result["no_socket"].append(connection_id)  # R7: re-owned, DISCONNECTED
                    continue
                previous = previous_owners.get(connection_id)
                self.manager.emit_record(
                    record,
                    "reclaimed",
                    previous_owner=previous,
                    trigger="request",
                    status=record.status.value,
                )
                if await self._adopt(record, "request"):
                    result["adopted"].append(connection_id)
                else:
                    result["not_mine"].append(connection_id)
        return result

    async def reconcile(self) -> int:
        """Adopt records I own that should be open but have no socket here (module doc).
        Returns how many were adopted. Reads my per-owner index and only the unheld records."""
        manager, me = self.manager, self.ownership.me
        index = await read_owner_index(self.ownership.store, keys.owner_index_key(me.instance_id))
        mine = {i for i, incarnation in index.value.items() if incarnation == me.incarnation}
        for gone in self._settled.keys() - mine:
            del self._settled[gone]
        unheld = []
        for connection_id in mine:
            held = manager.connections.get(connection_id)
            if held is not None and not held.lost:
                continue
            if connection_id in manager.orphans or connection_id in self._settled:
                continue
            unheld.append(connection_id)
        adopted = 0
        now = self.ownership.clock.now()
        for part in chunks(sorted(unheld), 500):
            raw = await self.ownership.store.bulk_get([keys.connection_key(i) for i in part])
            for value in raw.values():
                record = ConnectionRecord.from_json(value.value)
                if record.owner != me or record.id in manager.connections:
                    continue
                if not (record.auto_reconnect and record.status in _SHOULD_BE_OPEN):
                    self._settled[record.id] = record.fencing_token
                    continue
                if now - record.updated_at < self.reconcile_grace:
                    continue  # maybe a connect or an adoption in flight: look again later
                if await self._adopt(record, "reconcile"):
                    adopted += 1
        return adopted

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            counter: Any = getattr(self.metrics, name)
            counter.inc()


def _log(level: int, message: str, *args: object) -> None:
    try:
        log.log(level, message, *args)
    except Exception:  # background logging is fire-and-forget (reference §6)
        pass
