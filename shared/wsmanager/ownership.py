"""The ownership service: the imperative shell around the rules in ``core.ownership``.

Every operation reads the state store, asks the core what the rules allow, and writes back with
the ETag it read (R2). Conflicts are re-read and retried a bounded number of times. The service
keeps one piece of local state, the time of its last successful lease renewal, which is what
self-fencing (R8) is measured against.

The reclaim sweep (R6, R7) lives in ``wsmanager.reclaim``; it uses this service's store access.
The lease bookkeeping (renewal times, self-fencing R8, trust in peer liveness R5) is the base
class :class:`~wsmanager.lease_state.LeaseState`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from wsmanager.core import keys
from wsmanager.core.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    InvalidArgument,
    NotFound,
    NotOwner,
    SelfFenced,
)
from wsmanager.core.model import ConnectionRecord, ConnectionStatus, Heartbeat, Owner
from wsmanager.core.ownership import Liveness, LivenessPolicy, liveness, release, renew
from wsmanager.indexes import (
    encode_id_list,
    encode_owner_index,
    read_id_list,
    read_owner_index,
)
from wsmanager.lease_state import LeaseState
from wsmanager.ports import ABSENT, Clock, Delete, Etag, Operation, StateStore, Upsert

__all__ = ["OwnershipService", "RenewReport", "Stored"]

T = TypeVar("T")

#: How many records one transaction carries (release, renew, clear); keeps Lua/SQL calls short.
CHUNK = 100


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as read or written, with the ETag that guards the next write."""

    record: ConnectionRecord
    etag: Etag


@dataclass(frozen=True, slots=True)
class RenewReport:
    renewed: dict[str, int] = field(default_factory=dict)  # id -> fencing token still mine
    lost: set[str] = field(default_factory=set)  # ids no longer mine: drop their sockets (R8)


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class OwnershipService(LeaseState):
    """Ownership of connection records for one instance incarnation (``me``)."""

    def __init__(
        self,
        store: StateStore,
        *,
        me: Owner,
        policy: LivenessPolicy,
        clock: Clock,
        endpoint: str = "",
        record_ttl: float | None = None,
        max_retries: int = 16,
    ) -> None:
        keys.validate_instance_id(me.instance_id)
        if max_retries < 1:
            raise InvalidArgument("max_retries must be >= 1")
        self.store = store
        self.endpoint = endpoint
        self.record_ttl = record_ttl
        self.max_retries = max_retries
        LeaseState.__init__(self, me, policy, clock)
        #: Creates and deletes of this process rewrite the same two indexes (global, mine):
        #: taking turns here leaves CAS conflicts to other processes only (R2 unchanged).
        self._index_lock = asyncio.Lock()
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OwnershipService(me={self.me}, store={self.store!r})"

    # -- R8 ----------------------------------------------------------------------------------

    def check_may_act(self, record: ConnectionRecord, token: int | None = None) -> None:
        """R3 + R8 for a record I believe I own: raise unless I may act on it right now."""
        if record.owner != self.me:
            owner = record.owner.instance_id if record.owner else None
            raise NotOwner(record.id, owner, record.fencing_token)
        if token is not None and token != record.fencing_token:
            raise NotOwner(record.id, self.me.instance_id, record.fencing_token)
        if self.fenced():
            raise SelfFenced(f"instance {self.me.instance_id} is re-confirming its ownership")

    # -- heartbeats (R4, R1) -----------------------------------------------------------------

    async def heartbeat(self, connection_count: int = 0) -> Heartbeat:
        """Write my heartbeat (R4) and make sure sweepers can find me in the instance index.

        Raises:
            SelfFenced: a newer incarnation of my instance id owns the heartbeat key (R1);
                this process is superseded and must stop acting for good.
        """
        started = self.clock.now()
        key = keys.heartbeat_key(self.me.instance_id)
        for _ in range(self.max_retries):
            current = await self.store.get(key)
            if current is not None:
                other = Heartbeat.from_json(current.value)
                if other.incarnation > self.me.incarnation:
                    self.superseded = True
                    raise SelfFenced(f"superseded by incarnation {other.incarnation}")
            beat = Heartbeat(
                self.me.instance_id, self.me.incarnation, started, self.endpoint, connection_count
            )
            try:
                await self.store.save(
                    key, beat.to_json(), expect=current.etag if current else ABSENT
                )
            except ConcurrencyConflict:
                continue
            await self.register()
            if self.policy.heartbeats_enabled:
                self._note_lapse(started)
                self._heartbeat_at = started
            return beat
        raise ConcurrencyConflict("could not write heartbeat: too many concurrent writers")

    async def register(self) -> None:
        """Add my instance id to the instance index (idempotent)."""
        for _ in range(self.max_retries):
            index = await read_id_list(self.store, keys.INSTANCE_INDEX)
            if self.me.instance_id in index.value:
                return
            try:
                await self.store.transact(
                    [index.upsert(index.value + [self.me.instance_id], encode_id_list)]
                )
                return
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict("could not register in the instance index")

    async def remove_heartbeat(self) -> None:
        """R11: delete my heartbeat, unless a newer incarnation already replaced it."""
        key = keys.heartbeat_key(self.me.instance_id)
        current = await self.store.get(key)
        if current is not None and Heartbeat.from_json(current.value).owner == self.me:
            try:
                await self.store.delete(key, expect=current.etag)
            except ConcurrencyConflict:
                pass  # a newer incarnation wrote meanwhile: its heartbeat is not mine to delete

    async def heartbeats(self) -> dict[str, Heartbeat]:
        """Every heartbeat listed in the instance index, by instance id (unparsable ones skipped
        so one bad value cannot stop discovery)."""
        index = await read_id_list(self.store, keys.INSTANCE_INDEX)
        raw = await self.store.bulk_get([keys.heartbeat_key(i) for i in index.value])
        out: dict[str, Heartbeat] = {}
        for value in raw.values():
            try:
                beat = Heartbeat.from_json(value.value)
            except InvalidArgument:
                continue
            out[beat.instance_id] = beat
        return out

    async def live_peers(self) -> dict[str, Heartbeat]:
        """R4: instances whose heartbeat is fresh (me included when mine is)."""
        now = self.clock.now()
        return {
            i: hb
            for i, hb in (await self.heartbeats()).items()
            if liveness(hb.owner, hb, now, self.policy) is Liveness.ALIVE
        }

    # -- records -----------------------------------------------------------------------------

    async def get(self, connection_id: str) -> Stored | None:
        raw = await self.store.get(keys.connection_key(connection_id))
        return None if raw is None else Stored(ConnectionRecord.from_json(raw.value), raw.etag)

    async def require(self, connection_id: str) -> Stored:
        stored = await self.get(connection_id)
        if stored is None:
            raise NotFound(f"Connection not found: {connection_id}")
        return stored

    async def list_all(self) -> list[ConnectionRecord]:
        """Every record in the global index (cluster-wide List)."""
        index = await read_id_list(self.store, keys.CONNECTION_INDEX)
        out: list[ConnectionRecord] = []
        for part in chunks(index.value, 500):
            raw = await self.store.bulk_get([keys.connection_key(i) for i in part])
            out.extend(ConnectionRecord.from_json(v.value) for v in raw.values())
        return sorted(out, key=lambda r: (r.created_at, r.id))

    async def create(
        self,
        connection_id: str,
        url: str,
        *,
        tags: dict[str, str] | None = None,
        auto_reconnect: bool = False,
        topic: str | None = None,
        content_type: str = "text/plain",
        status: ConnectionStatus = ConnectionStatus.CONNECTING,
    ) -> Stored:
        """R2: create a record owned by me, with the global and my per-owner index, atomically."""
        now = self.clock.now()
        record = ConnectionRecord(
            id=connection_id,
            url=url,
            status=status,
            owner=self.me,
            fencing_token=1,
            created_at=now,
            updated_at=now,
            renewed_at=now,
            topic=topic,
            tags=tags or {},
            auto_reconnect=auto_reconnect,
            content_type=content_type,
        )
        key = keys.connection_key(connection_id)
        async with self._index_lock:
            return await self._create(key, record)

    async def _create(self, key: str, record: ConnectionRecord) -> Stored:
        connection_id = record.id
        for attempt in range(self.max_retries):
            if attempt:
                await self._backoff(attempt)
            glob = await read_id_list(self.store, keys.CONNECTION_INDEX)
            mine = await read_owner_index(self.store, keys.owner_index_key(self.me.instance_id))
            inst = await read_id_list(self.store, keys.INSTANCE_INDEX)
            ops: list[Operation] = [
                Upsert(key, record.to_json(), expect=ABSENT, ttl_seconds=self.record_ttl),
                glob.upsert(glob.value + [connection_id], encode_id_list),
                mine.upsert({**mine.value, connection_id: self.me.incarnation}, encode_owner_index),
            ]
            if self.me.instance_id not in inst.value:
                ops.append(inst.upsert(inst.value + [self.me.instance_id], encode_id_list))
            try:
                await self.store.transact(ops)
                self.believe(record)
                return await self.require(connection_id)
            except ConcurrencyConflict:
                if await self.store.get(key) is not None:
                    raise AlreadyExists(f"connection {connection_id} already exists") from None
        raise ConcurrencyConflict(f"could not create {connection_id}: indexes kept changing")

    async def update(
        self,
        connection_id: str,
        change: Callable[[ConnectionRecord], ConnectionRecord],
        *,
        token: int | None = None,
    ) -> Stored:
        """R3: change a record I own, by CAS. ``change`` must not alter owner or token."""
        for _ in range(self.max_retries):
            stored = await self.require(connection_id)
            self.check_may_act(stored.record, token)
            new = change(stored.record)
            if (new.owner, new.fencing_token, new.id) != (
                stored.record.owner,
                stored.record.fencing_token,
                stored.record.id,
            ):
                raise InvalidArgument("an update may not change id, owner or fencing token")
            new = new.with_changes(updated_at=self.clock.now())
            try:
                etag = await self.store.save(
                    keys.connection_key(connection_id),
                    new.to_json(),
                    expect=stored.etag,
                    ttl_seconds=self.record_ttl,
                )
                return Stored(new, etag)
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict(f"could not update {connection_id}")

    async def delete(self, connection_id: str, *, token: int | None = None) -> ConnectionRecord:
        """Remove a record I own and its index entries, in one transaction."""
        async with self._index_lock:
            return await self._delete(connection_id, token)

    async def _delete(self, connection_id: str, token: int | None) -> ConnectionRecord:
        for attempt in range(self.max_retries):
            if attempt:
                await self._backoff(attempt)
            stored = await self.require(connection_id)
            self.check_may_act(stored.record, token)
            glob = await read_id_list(self.store, keys.CONNECTION_INDEX)
            mine = await read_owner_index(self.store, keys.owner_index_key(self.me.instance_id))
            rest = {k: v for k, v in mine.value.items() if k != connection_id}
            try:
                await self.store.transact(
                    [
                        Delete(keys.connection_key(connection_id), expect=stored.etag),
                        glob.upsert([i for i in glob.value if i != connection_id], encode_id_list),
                        mine.upsert(rest, encode_owner_index),
                    ]
                )
                self._believed.pop(connection_id, None)
                return stored.record
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict(f"could not delete {connection_id}")

    async def _backoff(self, attempt: int) -> None:
        """A short jittered pause before retrying a CAS that lost to another process."""
        await asyncio.sleep(self._rng.uniform(0, min(0.001 * 2**attempt, 0.05)))

    async def my_records(self, also: Iterable[str] = ()) -> dict[str, Stored]:
        """Records my per-owner index lists for this incarnation (plus ``also``), as stored
        now. Callers check ``record.owner``: a record listed in ``also`` may be someone else's.
        """
        index = await read_owner_index(self.store, keys.owner_index_key(self.me.instance_id))
        ids = {i for i, inc in index.value.items() if inc == self.me.incarnation} | set(also)
        out: dict[str, Stored] = {}
        for part in chunks(sorted(ids), 500):
            raw = await self.store.bulk_get([keys.connection_key(i) for i in part])
            for value in raw.values():
                record = ConnectionRecord.from_json(value.value)
                out[record.id] = Stored(record, value.etag)
        return out

    async def renew_mine(self, held: Iterable[str] = ()) -> RenewReport:
        """R6/R12 (+R8 when heartbeats are off): confirm every record I still own.

        ``held`` names the connections the caller holds sockets for. Any of them that is gone
        or owned by someone else now is reported as lost: the caller must close its socket
        without sending or publishing anything more (R8).
        """
        started = self.clock.now()
        held = set(held) | set(self._believed)  # R8: what I believe mine, indexed or not
        current = await self.my_records(also=held)
        report = RenewReport(lost={i for i in held if i not in current})

        async def renew_one(stored: Stored) -> None:
            record = stored.record
            if record.owner != self.me:
                if record.id in held:
                    report.lost.add(record.id)
                return
            try:
                await self.store.save(
                    keys.connection_key(record.id),
                    renew(record, started).to_json(),
                    expect=stored.etag,
                    ttl_seconds=self.record_ttl,
                )
                report.renewed[record.id] = record.fencing_token
            except ConcurrencyConflict:
                again = await self.get(record.id)
                if again is not None and again.record.owner == self.me:
                    report.renewed[record.id] = again.record.fencing_token
                else:
                    report.lost.add(record.id)

        for part in chunks(list(current.values()), 64):
            await asyncio.gather(*(renew_one(s) for s in part))
        for connection_id in report.lost:
            self._believed.pop(connection_id, None)
        self._believed.update(report.renewed)
        if not self.superseded:
            self._records_at = started
            if self._lapsed_at is not None and started >= self._lapsed_at:
                self._lapsed_at = None  # R8: re-confirmed after the lapse
        return report

    async def reconfirm(self, held: Iterable[str] = ()) -> RenewReport:
        """R8: after a lapse, re-read my records; the caller drops the lost ones, then acts."""
        return await self.renew_mine(held)

    async def release_all(self) -> list[str]:
        """R11: hand my records back ownerless (token + 1) so a peer adopts them at once, then
        remove my heartbeat. Returns the released ids."""
        released: list[str] = []
        for _ in range(self.max_retries):
            mine = await self.my_records()
            todo = [s for s in mine.values() if s.record.owner == self.me]
            if not todo:
                break
            now = self.clock.now()
            try:
                for part in chunks(todo, CHUNK):
                    await self._release_chunk(part, now)
                    released.extend(s.record.id for s in part)
                    for stored in part:
                        self._believed.pop(stored.record.id, None)
            except ConcurrencyConflict:
                continue
        await self.remove_heartbeat()
        return released

    async def _release_chunk(self, part: Sequence[Stored], now: float) -> None:
        mine = await read_owner_index(self.store, keys.owner_index_key(self.me.instance_id))
        unowned = await read_owner_index(self.store, keys.owner_index_key(keys.UNOWNED))
        ids = {s.record.id for s in part}
        ops: list[Operation] = [
            Upsert(
                keys.connection_key(s.record.id),
                release(s.record, now).to_json(),
                expect=s.etag,
                ttl_seconds=self.record_ttl,
            )
            for s in part
        ]
        ops.append(
            mine.upsert({k: v for k, v in mine.value.items() if k not in ids}, encode_owner_index)
        )
        ops.append(unowned.upsert({**unowned.value, **{i: "" for i in ids}}, encode_owner_index))
        await self.store.transact(ops)

    async def clear_all(self) -> int:
        """R10: delete every connection record and index. Destructive; callers log it loudly."""
        glob = await read_id_list(self.store, keys.CONNECTION_INDEX)
        inst = await read_id_list(self.store, keys.INSTANCE_INDEX)
        owner_keys = [keys.owner_index_key(i) for i in [*inst.value, keys.UNOWNED]]
        deletes = [keys.connection_key(i) for i in glob.value] + owner_keys
        for part in chunks(deletes, CHUNK):
            await self.store.transact([Delete(k) for k in part])
        await self.store.delete(keys.CONNECTION_INDEX)
        return len(glob.value)
