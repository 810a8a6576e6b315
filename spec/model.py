"""The simplest reference model of the ownership rules R1-R12 (design brief §4).

Plain dicts and a fake clock, written from the brief's words and nothing else: this module
imports nothing from ``wsmanager``. The state machine in ``test_ownership_spec.py`` runs every
operation on the real implementation *and* on this model and insists that they agree, so a
reader can learn the rules here and trust that the implementation follows them.

Vocabulary:

* An **owner** is an instance id (the pod's ``HOSTNAME``) plus an incarnation (R1). The model
  numbers incarnations by process start: a larger number is a newer process.
* A **record** is one managed connection: who owns it, its fencing token (R2), when its owner
  last renewed it (R6) and the metadata a takeover must keep (R7).
* A **heartbeat** is what an instance last wrote about itself (R4): its incarnation and when.
* Time is ``now``; it only moves when :meth:`Model.advance` is called.

Boundaries follow the brief's wording: a heartbeat *older than* the stale threshold is dead
(exactly at the threshold is still alive); a record *not renewed for* the TTL means strictly
longer than the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["Beat", "ModelOwner", "Model", "ModelPolicy", "ModelRecord"]

CONNECTING = "CONNECTING"
DISCONNECTED = "DISCONNECTED"


@dataclass(frozen=True, order=True)
class ModelOwner:
    """R1: who runs a process. ``incarnation`` grows with every process start."""

    instance_id: str
    incarnation: int

    def __str__(self) -> str:
        return f"{self.instance_id}#{self.incarnation}"


@dataclass(frozen=True)
class ModelPolicy:
    """The timing settings the rules name, in seconds."""

    heartbeat_interval: float  # INSTANCE_HEARTBEAT_INTERVAL_SECONDS; 0 disables heartbeats (R4)
    stale_threshold: float  # INSTANCE_STALE_THRESHOLD_SECONDS (R4)
    stale_connection_ttl: float  # STALE_CONNECTION_TTL_SECONDS (R6)
    reclaim_interval: float = 30.0  # RECLAIM_INTERVAL_SECONDS (R7)

    @property
    def heartbeats_enabled(self) -> bool:
        return self.heartbeat_interval > 0


@dataclass(frozen=True)
class ModelRecord:
    """One connection record (R2: exactly one owner, or none after a graceful drain, R11)."""

    id: str
    url: str
    topic: str | None
    tags: dict[str, str]
    auto_reconnect: bool
    owner: ModelOwner | None
    token: int
    status: str
    renewed_at: float


@dataclass(frozen=True)
class Beat:
    """R4: the last heartbeat stored for an instance id."""

    incarnation: int
    last_seen: float


@dataclass
class Model:
    policy: ModelPolicy
    now: float
    records: dict[str, ModelRecord] = field(default_factory=dict)
    beats: dict[str, Beat] = field(default_factory=dict)

    # -- time ----------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    # -- liveness (R1, R4, R5) -----------------------------------------------------------------

    def alive(self, owner: ModelOwner) -> bool:
        """R4 + R1: alive while the heartbeat of *this incarnation* is no older than the stale
        threshold. With heartbeats disabled nobody is known to be alive (R6 falls back to age)."""
        if not self.policy.heartbeats_enabled:
            return False
        beat = self.beats.get(owner.instance_id)
        return (
            beat is not None
            and beat.incarnation == owner.incarnation
            and self.now - beat.last_seen <= self.policy.stale_threshold
        )

    def instance_alive(self, instance_id: str) -> bool:
        """R4: does *some* incarnation of this instance id have a fresh heartbeat?"""
        beat = self.beats.get(instance_id)
        return beat is not None and self.alive(ModelOwner(instance_id, beat.incarnation))

    def live_instances(self) -> set[str]:
        """R4: what peer discovery must report."""
        return {i for i in self.beats if self.instance_alive(i)}

    # -- R6, R7: reclaim -----------------------------------------------------------------------

    def reclaimable(self, record: ModelRecord) -> bool:
        """R6 (+ R11): ownerless records at once; otherwise only when the owner is not alive
        *and* the owner has not renewed the record for the stale-connection TTL."""
        if record.owner is None:
            return True
        if self.alive(record.owner):
            return False
        return self.now - record.renewed_at > self.policy.stale_connection_ttl

    def takeable_by(self, sweeper: ModelOwner, record: ModelRecord) -> bool:
        """R7: does a sweep by ``sweeper`` now have to take ``record``?

        Reclaimable records of other owners, within what a sweep reads: R7 makes a sweep's cost
        grow with the number of orphans, so it reads the indexes of instance ids that look dead,
        the index of released records (R11), and the sweeper's own instance id (its
        predecessors' records, R1). A predecessor incarnation's records under an instance id
        whose newer incarnation is alive are therefore taken by that newer incarnation.
        """
        if record.owner == sweeper or not self.reclaimable(record):
            return False
        if record.owner is None or record.owner.instance_id == sweeper.instance_id:
            return True
        return not self.instance_alive(record.owner.instance_id)

    def sweep_expectation(self, sweepers: set[ModelOwner]) -> dict[str, set[ModelOwner]]:
        """R7 for sweepers running at the same moment: each record listed must end up with
        exactly one of the owners named for it (concurrent reclaimers: exactly one wins)."""
        out: dict[str, set[ModelOwner]] = {}
        for record in self.records.values():
            winners = {s for s in sweepers if self.takeable_by(s, record)}
            if winners:
                out[record.id] = winners
        return out

    def take(self, connection_id: str, new_owner: ModelOwner) -> ModelRecord:
        """R7: a takeover keeps id, url, topic, tags and auto_reconnect, names the new owner
        and adds one to the fencing token; the socket re-opens only if auto_reconnect."""
        record = self.records[connection_id]
        assert record.owner != new_owner and self.reclaimable(record)
        taken = replace(
            record,
            owner=new_owner,
            token=record.token + 1,
            status=CONNECTING if record.auto_reconnect else DISCONNECTED,
            renewed_at=self.now,
        )
        self.records[connection_id] = taken
        return taken

    # -- an instance's own operations ----------------------------------------------------------

    def heartbeat(self, owner: ModelOwner) -> bool:
        """R4: write ``owner``'s heartbeat. R1: a process whose instance id already carries a
        newer incarnation's heartbeat is superseded: nothing is written (returns False)."""
        beat = self.beats.get(owner.instance_id)
        if beat is not None and beat.incarnation > owner.incarnation:
            return False
        self.beats[owner.instance_id] = Beat(owner.incarnation, self.now)
        return True

    def remove_heartbeat(self, owner: ModelOwner) -> None:
        """R11: a draining instance deletes its heartbeat (never a newer incarnation's)."""
        beat = self.beats.get(owner.instance_id)
        if beat is not None and beat.incarnation == owner.incarnation:
            del self.beats[owner.instance_id]

    def connect(
        self,
        owner: ModelOwner,
        connection_id: str,
        *,
        url: str,
        topic: str | None,
        tags: dict[str, str],
        auto_reconnect: bool,
    ) -> ModelRecord:
        """R2: a new record names its creator as the one owner, with a first fencing token."""
        assert connection_id not in self.records
        record = ModelRecord(
            id=connection_id,
            url=url,
            topic=topic,
            tags=dict(tags),
            auto_reconnect=auto_reconnect,
            owner=owner,
            token=1,
            status=CONNECTING,
            renewed_at=self.now,
        )
        self.records[connection_id] = record
        return record

    def owned_by(self, owner: ModelOwner) -> dict[str, ModelRecord]:
        return {i: r for i, r in self.records.items() if r.owner == owner}

    def renew(self, owner: ModelOwner) -> dict[str, int]:
        """R6/R12: the owner confirms every record it still owns; returns id -> token."""
        for connection_id, record in self.owned_by(owner).items():
            self.records[connection_id] = replace(
                record, renewed_at=max(self.now, record.renewed_at)
            )
        return {i: r.token for i, r in self.owned_by(owner).items()}

    def may_act(self, owner: ModelOwner, connection_id: str, token: int) -> bool:
        """R3 (+R2): only the current owner, holding the current fencing token, may act."""
        record = self.records.get(connection_id)
        return record is not None and record.owner == owner and record.token == token

    def set_tag(self, connection_id: str, key: str, value: str) -> None:
        """R3: a tag change, run by the owner."""
        record = self.records[connection_id]
        self.records[connection_id] = replace(record, tags={**record.tags, key: value})

    def disconnect(self, connection_id: str) -> None:
        """R3: Disconnect, run by the owner, removes the record."""
        del self.records[connection_id]

    def release_all(self, owner: ModelOwner) -> list[str]:
        """R11: a graceful drain leaves the owner's records ownerless at once (a change of
        owner, so the token grows) and the sockets closed; then the heartbeat goes."""
        released = sorted(self.owned_by(owner))
        for connection_id in released:
            record = self.records[connection_id]
            self.records[connection_id] = replace(
                record, owner=None, token=record.token + 1, status=DISCONNECTED, renewed_at=self.now
            )
        self.remove_heartbeat(owner)
        return released

    def clear_all(self) -> None:
        """R10: CLEAR_ALL_ON_START deletes every connection record (and index)."""
        self.records.clear()
