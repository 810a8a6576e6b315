"""The reclaim sweep (R5, R6, R7): find orphans through dead owners' indexes, take them by CAS.

Cost: the sweep reads the instance index, the heartbeats, and the per-owner indexes of *dead*
instances (plus the ownerless index of R11 and my own index, for records of my predecessor
incarnation, R1); it reads records only for those candidates. So its cost grows with the number
of orphans, not with the number of records. With heartbeats disabled nobody is known alive and
every per-owner index is read: record age alone decides (R4, R6).

Takeovers go in chunks, one transaction per chunk carrying the CAS of every record plus the two
index updates; a conflict (another sweeper won a record, or touched an index) falls back to
one record at a time, so exactly one of several concurrent sweepers takes each record.

:func:`reclaim_one` is the lazy reclaim of R3: one named record, taken only under the same
eligibility rule (R6), by the same CAS transaction as a sweep's.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from wsmanager.core import keys
from wsmanager.core.errors import ConcurrencyConflict, InvalidArgument
from wsmanager.core.model import ConnectionRecord, Heartbeat, Owner
from wsmanager.core.ownership import Liveness, dead_owners, is_reclaimable, liveness, takeover
from wsmanager.indexes import (
    encode_id_list,
    encode_owner_index,
    parse_owner_index,
    read_id_list,
    read_owner_index,
)
from wsmanager.ownership import OwnershipService, Stored, chunks
from wsmanager.ports import Operation, Upsert

__all__ = ["Claim", "ClaimOutcome", "SweepReport", "reclaim_one", "sweep"]

TAKEOVER_CHUNK = 50


@dataclass(slots=True)
class SweepReport:
    """What one sweep examined and took (the audit record of R7)."""

    sweeper: str
    new_owner: str
    started_at: float
    dead_instances: list[str] = field(default_factory=list)
    examined: int = 0
    taken: list[ConnectionRecord] = field(default_factory=list)
    conflicts: int = 0
    pruned: int = 0
    #: id -> instance id of the owner each taken record had (``None``: released, R11).
    previous_owners: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Candidate:
    stored: Stored
    index_instance: str  # the per-owner index it was found in


async def sweep(
    service: OwnershipService,
    *,
    new_owner: Owner | None = None,
    limit: int | None = None,
    pace: Callable[[], Awaitable[None]] | None = None,
    rng: random.Random | None = None,
    released_only: bool = False,
) -> SweepReport:
    """Run one reclaim sweep and return its report.

    Args:
        new_owner: who takes the orphans (default: the service's own instance). The reclaim
            function passes a live holder here.
        limit: at most this many takeovers (rate limit of R7); the rest wait for the next sweep.
        pace: awaited between takeover chunks (jittered sleep: no reconnect storm, R7).
        released_only: take only released (ownerless, R11) records: no peer is judged dead
            (for a drain hand-off, or while peer liveness cannot be trusted, R5).

    Raises:
        StoreUnavailable: the store is failing; nothing was taken (R5).
    """
    owner = new_owner or service.me
    rng = rng or random.Random()
    now = service.clock.now()
    report = SweepReport(service.me.instance_id, owner.instance_id, now)
    # R5: every read below raises StoreUnavailable on a failing store, before anything is taken.
    instances = (await read_id_list(service.store, keys.INSTANCE_INDEX)).value
    beats = await service.heartbeats()
    dead = dead_owners(instances, beats, now, service.policy) - {owner.instance_id}
    if released_only:
        dead = set()
    report.dead_instances = sorted(dead)
    scan = [keys.UNOWNED] if released_only else sorted(dead | {keys.UNOWNED, owner.instance_id})
    raw_indexes = await service.store.bulk_get([keys.owner_index_key(i) for i in scan])
    wanted: dict[str, str] = {}  # connection id -> index instance it was found in
    for instance in scan:
        key = keys.owner_index_key(instance)
        entries = parse_owner_index(raw_indexes.get(key), key).value
        for connection_id, incarnation in entries.items():
            if instance == owner.instance_id and incarnation == owner.incarnation:
                continue  # already the new owner's
            wanted[connection_id] = instance
    candidates: list[_Candidate] = []
    missing: dict[str, list[str]] = {}
    for part in chunks(sorted(wanted), 500):
        raw = await service.store.bulk_get([keys.connection_key(i) for i in part])
        for connection_id in part:
            value = raw.get(keys.connection_key(connection_id))
            if value is None:  # expired by the GC TTL (R12): prune the dangling entry
                missing.setdefault(wanted[connection_id], []).append(connection_id)
                continue
            record = ConnectionRecord.from_json(value.value)
            report.examined += 1
            if _eligible(record, beats, now, service, owner):
                candidates.append(_Candidate(Stored(record, value.etag), wanted[connection_id]))
    rng.shuffle(candidates)  # concurrent sweepers start at different places (fewer conflicts)
    if limit is not None:
        candidates = candidates[:limit]
    for batch in chunks(candidates, TAKEOVER_CHUNK):
        await _take_chunk(service, owner, batch, now, report)
        if pace is not None:
            await pace()
    report.pruned = await _prune(service, missing)
    return report


def _eligible(
    record: ConnectionRecord,
    beats: dict[str, Heartbeat],
    now: float,
    service: OwnershipService,
    owner: Owner,
) -> bool:
    if record.owner == owner:
        return False
    heartbeat = beats.get(record.owner.instance_id) if record.owner else None
    return is_reclaimable(record, heartbeat, now, service.policy)


async def _take_chunk(
    service: OwnershipService,
    owner: Owner,
    part: Sequence[_Candidate],
    now: float,
    report: SweepReport,
) -> None:
    try:
        await _transact_takeovers(service, owner, part, now)
    except ConcurrencyConflict:
        pass
    else:
        for c in part:
            taken = takeover(c.stored.record, owner, now)
            service.believe(taken)  # R8: mine now (if the sweeper is the new owner)
            report.taken.append(taken)
            report.previous_owners[c.stored.record.id] = _owner_id(c.stored.record)
        return
    for candidate in part:  # one at a time, re-reading what changed
        one = await _take_one(service, owner, candidate, now)
        if one is None:
            report.conflicts += 1
        else:
            previous, new = one
            service.believe(new)
            report.taken.append(new)
            report.previous_owners[new.id] = _owner_id(previous)


def _owner_id(record: ConnectionRecord) -> str | None:
    return record.owner.instance_id if record.owner else None


async def _take_one(
    service: OwnershipService, owner: Owner, candidate: _Candidate, now: float
) -> tuple[ConnectionRecord, ConnectionRecord] | None:
    """One record by CAS, re-reading on conflict; ``(as read, as taken)`` or ``None``."""
    for _ in range(service.max_retries):
        stored = await service.get(candidate.stored.record.id)
        if stored is None:
            return None
        beats = await service.heartbeats()
        if not _eligible(stored.record, beats, now, service, owner):
            return None  # another sweeper won, or the owner came back: move on (R7)
        try:
            await _transact_takeovers(
                service, owner, [_Candidate(stored, candidate.index_instance)], now
            )
            return stored.record, takeover(stored.record, owner, now)
        except ConcurrencyConflict:
            continue
    return None


async def _transact_takeovers(
    service: OwnershipService, owner: Owner, part: Sequence[_Candidate], now: float
) -> None:
    """One transaction: every record by CAS (R2, R7), old indexes minus, new index plus."""
    ops: list[Operation] = []
    by_source: dict[str, list[str]] = {}
    for c in part:
        new = takeover(c.stored.record, owner, now)
        ops.append(
            Upsert(
                keys.connection_key(new.id),
                new.to_json(),
                expect=c.stored.etag,
                ttl_seconds=service.record_ttl,
            )
        )
        by_source.setdefault(c.index_instance, []).append(new.id)
    target_key = keys.owner_index_key(owner.instance_id)
    target = await read_owner_index(service.store, target_key)
    target_value = dict(target.value)
    for source, ids in by_source.items():
        if source == owner.instance_id:
            continue  # predecessor's entries: rewritten below with my incarnation
        snap = await read_owner_index(service.store, keys.owner_index_key(source))
        gone = set(ids)
        ops.append(
            snap.upsert({k: v for k, v in snap.value.items() if k not in gone}, encode_owner_index)
        )
    for c in part:
        target_value[c.stored.record.id] = owner.incarnation
    ops.append(target.upsert(target_value, encode_owner_index))
    # The new owner must be findable by later sweeps should it die too (R7): a sweeper that
    # never registered (heartbeats off, or the reclaim function's chosen holder) joins the
    # instance index in the same transaction, as create() does.
    instances = await read_id_list(service.store, keys.INSTANCE_INDEX)
    if owner.instance_id not in instances.value:
        ops.append(instances.upsert([*instances.value, owner.instance_id], encode_id_list))
    await service.store.transact(ops)


async def _prune(service: OwnershipService, missing: dict[str, list[str]]) -> int:
    """R12: drop index entries whose record expired. Best effort: a conflict waits a sweep."""
    pruned = 0
    for instance, ids in missing.items():
        gone = set(ids)
        try:
            snap = await read_owner_index(service.store, keys.owner_index_key(instance))
            glob = await read_id_list(service.store, keys.CONNECTION_INDEX)
            # Re-check under the snapshot: a record may have been re-created meanwhile.
            present = await service.store.bulk_get([keys.connection_key(i) for i in gone])
            gone -= {k.removeprefix(keys.connection_key("")) for k in present}
            if not gone:
                continue
            rest = {k: v for k, v in snap.value.items() if k not in gone}
            ops: list[Operation] = [
                snap.upsert(rest, encode_owner_index),
                glob.upsert([i for i in glob.value if i not in gone], encode_id_list),
            ]
            await service.store.transact(ops)
            pruned += len(gone)
        except ConcurrencyConflict:
            continue
    return pruned


# -- lazy reclaim of one record (R3 -> R6/R7) ------------------------------------------------


class ClaimOutcome(enum.Enum):
    TAKEN = "taken"
    NOT_FOUND = "not_found"
    #: Already the new owner's: nothing to take.
    MINE = "mine"
    #: R6: its owner is alive (or came back, or another reclaimer won it): never reclaimed.
    OWNER_ALIVE = "owner_alive"
    #: R6: its owner is not alive, but the record was renewed less than the stale TTL ago.
    NOT_STALE = "not_stale"
    #: The record kept changing under the CAS; nothing was taken.
    CONFLICT = "conflict"
    #: Its owner would have to be judged dead, which the caller ruled out (R5).
    DEFERRED = "deferred"


@dataclass(frozen=True, slots=True)
class Claim:
    """What :func:`reclaim_one` did. ``record``: the taken record when TAKEN, else the record
    as last read (``None`` when not found or on conflict)."""

    outcome: ClaimOutcome
    record: ConnectionRecord | None = None
    #: TAKEN: the owner the record had before (``None``: it was released, R11).
    previous_owner: Owner | None = None


async def reclaim_one(
    service: OwnershipService,
    connection_id: str,
    *,
    new_owner: Owner | None = None,
    released_only: bool = False,
) -> Claim:
    """Take one record over if R6 allows it right now (the lazy reclaim of R3).

    Same rule and same CAS transaction as :func:`sweep`: a record whose owner is alive is never
    taken (R6); a dead owner's record only once it has gone ``STALE_CONNECTION_TTL`` unrenewed;
    a released one (R11) at once. Costs a record read, one heartbeat read and one transaction.

    ``released_only``: take it only if it is ownerless (R11); else DEFERRED (R5: the caller
    cannot judge peers dead right now).

    Raises:
        StoreUnavailable: the store is failing; nothing was taken (R5).
    """
    owner = new_owner or service.me
    for _ in range(service.max_retries):
        stored = await service.get(connection_id)
        if stored is None:
            return Claim(ClaimOutcome.NOT_FOUND)
        record = stored.record
        if record.owner == owner:
            return Claim(ClaimOutcome.MINE, record)
        if released_only and record.owner is not None:
            return Claim(ClaimOutcome.DEFERRED, record)
        now = service.clock.now()
        beat = await _heartbeat_of(service, record.owner) if record.owner else None
        if not is_reclaimable(record, beat, now, service.policy):
            assert record.owner is not None  # a released record is always reclaimable
            alive = liveness(record.owner, beat, now, service.policy) is Liveness.ALIVE
            outcome = ClaimOutcome.OWNER_ALIVE if alive else ClaimOutcome.NOT_STALE
            return Claim(outcome, record)
        source = record.owner.instance_id if record.owner else keys.UNOWNED
        try:
            await _transact_takeovers(service, owner, [_Candidate(stored, source)], now)
        except ConcurrencyConflict:
            continue  # re-read: another reclaimer may have won it (then its owner is alive)
        taken = takeover(record, owner, now)
        service.believe(taken)
        return Claim(ClaimOutcome.TAKEN, taken, record.owner)
    return Claim(ClaimOutcome.CONFLICT)


async def _heartbeat_of(service: OwnershipService, owner: Owner) -> Heartbeat | None:
    raw = await service.store.get(keys.heartbeat_key(owner.instance_id))
    if raw is None:
        return None
    try:
        return Heartbeat.from_json(raw.value)
    except InvalidArgument:
        return None  # unparsable: as in a sweep, no evidence that the owner is alive
