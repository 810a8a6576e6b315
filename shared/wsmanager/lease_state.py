"""The lease of one process incarnation (R1, R5, R8): renewal times, self-fencing, and when
peers' liveness may be trusted. :class:`~wsmanager.ownership.OwnershipService` is one; the
service's store operations move these clocks, the rules come from ``core.ownership``.

* **R8, two deadlines.** With heartbeats on, my lease lapses when my heartbeat is older than
  the renew deadline, and also when my last record renewal is older than two thirds of the
  stale TTL: a takeover needs a record unrenewed for that TTL, and a newer incarnation of my
  name declares me dead without waiting for my heartbeat to age (R1).
* **R8, lapses stick.** A renewal that finds the deadline already passed (a pause, a store
  outage) keeps me fenced until a re-confirmation started after it has completed; a heartbeat
  alone proves nothing about records taken during the lapse.
* **R8, what I believe.** Records this process created or took over are remembered, so a
  re-confirmation reports them lost even when no index lists them any more.
* **R5, trust.** Right after the store failed (or my lease lapsed), a peer's stale heartbeat
  may be the outage's doing: peers are judged dead only once the store has answered for a
  whole stale threshold (the stale TTL with heartbeats off) since the last trouble seen.
"""

from __future__ import annotations

import dataclasses

from wsmanager.core.model import ConnectionRecord, Owner
from wsmanager.core.ownership import LivenessPolicy, is_fenced
from wsmanager.ports import Clock

__all__ = ["LeaseState"]


class LeaseState:
    """Lease bookkeeping of one incarnation (module doc)."""

    def __init__(self, me: Owner, policy: LivenessPolicy, clock: Clock) -> None:
        self.me = me
        self.policy = policy
        self.clock = clock
        #: R4: when my last heartbeat was written (heartbeats on).
        self._heartbeat_at: float | None = None
        #: R6: when my last complete record renewal (re-confirmation) started.
        self._records_at: float | None = None
        #: R8: when a lapse was noticed; fenced until a re-confirmation started after it ends.
        self._lapsed_at: float | None = None
        #: R8: records this process believes it owns (id -> token).
        self._believed: dict[str, int] = {}
        #: R1: set once a newer incarnation of my instance id has written its heartbeat.
        self.superseded = False
        #: R5: when this process last saw the store fail (or its own lease lapse); what
        #: happened before this process started is unknown, so it starts now.
        self.trouble_at: float = clock.now()
        #: R8 for record renewals: the heartbeat-less rule (deadline: 2/3 of the stale TTL).
        self._records_policy = dataclasses.replace(policy, heartbeat_interval=0.0)

    @property
    def last_renewal_at(self) -> float | None:
        """R8: when my lease was last confirmed (heartbeat written, or records renewed when
        heartbeats are off). ``None`` until the first renewal: a fresh process must register
        before it acts."""
        return self._heartbeat_at if self.policy.heartbeats_enabled else self._records_at

    @last_renewal_at.setter
    def last_renewal_at(self, value: float | None) -> None:
        """Set both renewal times (tests and benchmarks pretending a fresh lease)."""
        self._heartbeat_at = self._records_at = value

    def _lease_lapsed(self, now: float) -> bool:
        """R8: past my renew deadline? With heartbeats on, two deadlines count: the heartbeat
        one, and (once I have renewed my records at all) the record one, two thirds of the
        stale TTL after my last record renewal. A takeover always needs a record unrenewed
        for that TTL, and a newer incarnation of my name declares me dead without waiting for
        my heartbeat to age (R1): a fresh heartbeat alone does not prove my records mine."""
        if is_fenced(self.last_renewal_at, now, self.policy):
            return True
        if self.policy.heartbeats_enabled and self._records_at is not None:
            return is_fenced(self._records_at, now, self._records_policy)
        return False

    def fenced(self, now: float | None = None) -> bool:
        """R8: must I stop acting on my sockets until I have re-confirmed my records?"""
        if self.superseded or self._lapsed_at is not None:
            return True
        return self._lease_lapsed(self.clock.now() if now is None else now)

    def note_trouble(self, now: float | None = None) -> None:
        """R5: the store failed (as seen from here): distrust peer liveness for a while."""
        when = self.clock.now() if now is None else now
        self.trouble_at = max(self.trouble_at, when)

    def trusts_liveness(self, now: float | None = None) -> bool:
        """R5: may this process judge peers dead (and reclaim from them) right now?

        Only once the store has answered for a whole takeover window since the last trouble
        seen: a live peer re-writes its heartbeat and renews its records well within that
        window once the store answers again, so staleness seen after it is real.
        """
        policy = self.policy
        window = policy.stale_connection_ttl
        if policy.heartbeats_enabled:
            window = policy.stale_threshold
        return (self.clock.now() if now is None else now) - self.trouble_at >= window

    def _note_lapse(self, now: float) -> None:
        """R8: a renewal found my deadline already passed (I was paused, or the store failed):
        stay fenced until a re-confirmation that starts from now on has completed, whatever
        renews meanwhile (a heartbeat proves nothing about records taken during the lapse)."""
        if self.last_renewal_at is None or self._lapsed_at is not None:
            return
        if self._lease_lapsed(now):
            self._lapsed_at = now
            self.note_trouble(now)  # R5: a lapse means the store (or this process) stalled

    def believe(self, record: ConnectionRecord) -> None:
        """Note a record this process now owns (created, or taken over: R7)."""
        if record.owner == self.me:
            self._believed[record.id] = record.fencing_token
