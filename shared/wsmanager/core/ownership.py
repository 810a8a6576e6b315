"""The ownership and liveness rules R1-R12 of the design brief, as pure functions over values.

Rule 1 of this module: every decision about who owns a connection, who is alive, what may be
reclaimed and whether an owner may act lives here. The shell (``wsmanager.ownership``) only
reads, asks these functions, and writes with the ETag it read.

How it works, in short:

* An owner is ``(instance_id, incarnation)`` (R1). A record names exactly one owner, or none
  after a graceful release (R11), and a fencing token that grows on every change of owner (R2).
* A peer is alive while its heartbeat for *that incarnation* is no older than the stale
  threshold (R4). A heartbeat exactly at the threshold is still alive; a heartbeat from the
  future (clock skew, a clock going backwards) counts as fresh: it is never evidence of death (R5).
* A record is reclaimable when it has no owner, or its owner is not alive and the record was
  not renewed for ``stale_connection_ttl`` (R6). With heartbeats disabled (interval 0) nobody
  is known alive, so record age alone decides.
* A takeover keeps id, url, topic, tags and auto_reconnect, names the new owner and bumps the
  token (R7); the socket is re-opened (CONNECTING) only if auto_reconnect.
* An owner that has not renewed its lease (heartbeat, or record renewal when heartbeats are
  off) for longer than its renew deadline fences itself: it may not act until it has
  re-confirmed its tokens (R8). The deadline is shorter than the stale threshold, so an owner
  stops acting *before* anybody may take its connections.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wsmanager.core.errors import InvalidArgument, NotOwner, SelfFenced
from wsmanager.core.model import ConnectionRecord, ConnectionStatus, Heartbeat, Owner

__all__ = [
    "Act",
    "Forward",
    "Liveness",
    "LivenessPolicy",
    "Verdict",
    "authorize",
    "check_token",
    "dead_owners",
    "fence_deadline",
    "is_fenced",
    "is_reclaimable",
    "liveness",
    "owner_alive",
    "release",
    "renew",
    "takeover",
]


@dataclass(frozen=True, slots=True)
class LivenessPolicy:
    """The timing knobs of R4, R6 and R8, in seconds (fractions allowed for tests)."""

    heartbeat_interval: float = 10.0
    stale_threshold: float = 60.0
    stale_connection_ttl: float = 60.0
    #: R8: how long an owner may go without renewing before it fences itself. ``None`` derives
    #: it: two thirds of the window after which peers may take over, so it always fences first.
    renew_deadline: float | None = None

    def __post_init__(self) -> None:
        if self.heartbeat_interval < 0:
            raise InvalidArgument("heartbeat interval must be >= 0 (0 disables heartbeats)")
        if self.stale_threshold <= 0 or self.stale_connection_ttl <= 0:
            raise InvalidArgument("stale threshold and stale connection TTL must be > 0")
        if self.heartbeats_enabled and self.stale_threshold <= self.heartbeat_interval:
            raise InvalidArgument("stale threshold must be longer than the heartbeat interval")
        if self.renew_deadline is not None and not (0 < self.renew_deadline < self.takeover_window):
            raise InvalidArgument("renew deadline must be > 0 and shorter than the stale window")

    @property
    def heartbeats_enabled(self) -> bool:
        return self.heartbeat_interval > 0

    @property
    def takeover_window(self) -> float:
        """The least time after an owner's last renewal before a peer may take its records."""
        if self.heartbeats_enabled:
            return min(self.stale_threshold, self.stale_connection_ttl)
        return self.stale_connection_ttl

    @property
    def effective_renew_deadline(self) -> float:
        if self.renew_deadline is not None:
            return self.renew_deadline
        return self.takeover_window * 2.0 / 3.0


class Liveness(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    #: Heartbeats are disabled: liveness is not known, record age decides (R4, R6).
    UNKNOWN = "unknown"


def liveness(
    owner: Owner, heartbeat: Heartbeat | None, now: float, policy: LivenessPolicy
) -> Liveness:
    """R4/R5/R1: is ``owner`` alive according to the heartbeat stored for its instance id?

    A heartbeat of another incarnation of the same instance id says nothing good about this
    owner: a restarted pod never silently keeps its predecessor's connections (R1).
    """
    if not policy.heartbeats_enabled:
        return Liveness.UNKNOWN
    if heartbeat is None or heartbeat.owner != owner:
        return Liveness.DEAD
    age = now - heartbeat.last_seen_at
    # age < 0 means the reader's clock is behind the writer's: fresh, never evidence of death.
    return Liveness.ALIVE if age <= policy.stale_threshold else Liveness.DEAD


def owner_alive(
    owner: Owner, heartbeats: Mapping[str, Heartbeat], now: float, policy: LivenessPolicy
) -> bool:
    return liveness(owner, heartbeats.get(owner.instance_id), now, policy) is Liveness.ALIVE


def is_reclaimable(
    record: ConnectionRecord, heartbeat: Heartbeat | None, now: float, policy: LivenessPolicy
) -> bool:
    """R6: may a sweeper take this record over?

    ``heartbeat`` is what the store holds for the record owner's instance id (or ``None``).
    The caller must not call this while the store is failing (R5): a missing heartbeat that was
    never read is not a missing heartbeat.
    """
    if record.owner is None:
        return True  # R11: released at drain, adopt at once
    state = liveness(record.owner, heartbeat, now, policy)
    if state is Liveness.ALIVE:
        return False  # R6: a connection whose owner is alive is never reclaimed
    return now - record.renewed_at > policy.stale_connection_ttl


def takeover(record: ConnectionRecord, new_owner: Owner, now: float) -> ConnectionRecord:
    """R7: the value a reclaimer writes (by CAS on the ETag it read).

    Keeps id, url, topic, tags, auto_reconnect; the token grows by one; the socket is re-opened
    only if auto_reconnect, otherwise the record is marked DISCONNECTED.
    """
    if record.owner == new_owner:
        raise InvalidArgument("an owner cannot take over its own record")
    status = ConnectionStatus.CONNECTING if record.auto_reconnect else ConnectionStatus.DISCONNECTED
    return record.with_changes(
        owner=new_owner,
        fencing_token=record.fencing_token + 1,
        status=status,
        updated_at=now,
        renewed_at=now,
    )


def release(record: ConnectionRecord, now: float) -> ConnectionRecord:
    """R11: graceful drain leaves the record ownerless (a change of owner: token + 1)."""
    return record.with_changes(
        owner=None,
        fencing_token=record.fencing_token + 1,
        status=ConnectionStatus.DISCONNECTED,
        updated_at=now,
        renewed_at=now,
    )


def renew(record: ConnectionRecord, now: float) -> ConnectionRecord:
    """R6/R12: the owner confirms its record. ``renewed_at`` never moves backwards."""
    return record.with_changes(renewed_at=max(now, record.renewed_at))


def fence_deadline(last_renewal_at: float, policy: LivenessPolicy) -> float:
    """R8: the moment after which an owner that has not renewed must stop acting."""
    return last_renewal_at + policy.effective_renew_deadline


def is_fenced(last_renewal_at: float | None, now: float, policy: LivenessPolicy) -> bool:
    """R8: has this owner gone past its renew deadline (or never renewed at all)?"""
    if last_renewal_at is None:
        return True
    return now > fence_deadline(last_renewal_at, policy)


@dataclass(frozen=True, slots=True)
class Act:
    """This instance owns the record at this token: act locally."""

    fencing_token: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Another instance owns it (or nobody does): send the command there / reclaim first."""

    owner: Owner | None
    fencing_token: int


Verdict = Act | Forward


def authorize(
    record: ConnectionRecord,
    me: Owner,
    *,
    last_renewal_at: float | None,
    now: float,
    policy: LivenessPolicy,
) -> Verdict:
    """R3 + R8: who acts on ``record`` when ``me`` receives a command for it.

    Raises:
        SelfFenced: I own it but have lapsed my renew deadline (R8); re-confirm first.
    """
    if record.owner != me:
        return Forward(record.owner, record.fencing_token)
    if is_fenced(last_renewal_at, now, policy):
        raise SelfFenced(
            f"instance {me.instance_id} missed its renew deadline; "
            "re-confirming ownership before acting"
        )
    return Act(record.fencing_token)


def check_token(record: ConnectionRecord, presented: int | None) -> None:
    """R3: a caller that names a fencing token must name the current one."""
    if presented is not None and presented != record.fencing_token:
        raise NotOwner(
            record.id,
            record.owner.instance_id if record.owner else None,
            record.fencing_token,
            f"stale fencing token {presented} for connection {record.id}; current token "
            f"{record.fencing_token} held by "
            f"{record.owner.instance_id if record.owner else 'nobody'}",
        )


def dead_owners(
    instance_ids: Iterable[str],
    heartbeats: Mapping[str, Heartbeat],
    now: float,
    policy: LivenessPolicy,
) -> set[str]:
    """R4/R7: instance ids whose current heartbeat is missing or stale (sweep candidates)."""
    if not policy.heartbeats_enabled:
        return set(instance_ids)
    out = set()
    for instance_id in instance_ids:
        hb = heartbeats.get(instance_id)
        if hb is None or liveness(hb.owner, hb, now, policy) is Liveness.DEAD:
            out.add(instance_id)
    return out
