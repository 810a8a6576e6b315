"""The ownership service and the reclaim sweep against every state-store adapter.

The ``store`` fixture (tests/integration/conftest.py) yields each adapter in turn, on real
backends (SQLite file, real redis-server), each test in its own key namespace.
"""

from __future__ import annotations

import asyncio

import pytest

from wsmanager.clock import ManualClock
from wsmanager.core import keys
from wsmanager.core.errors import (
    AlreadyExists,
    NotFound,
    NotOwner,
    SelfFenced,
    StoreUnavailable,
)
from wsmanager.core.model import ConnectionStatus, Owner
from wsmanager.core.ownership import LivenessPolicy
from wsmanager.indexes import read_id_list, read_owner_index
from wsmanager.ownership import OwnershipService
from wsmanager.ports import StateStore
from wsmanager.reclaim import sweep

POLICY = LivenessPolicy(heartbeat_interval=10, stale_threshold=60, stale_connection_ttl=60)


def service(
    store: StateStore,
    clock: ManualClock,
    name: str,
    incarnation: str = "1",
    policy: LivenessPolicy = POLICY,
) -> OwnershipService:
    return OwnershipService(
        store,
        me=Owner(name, incarnation),
        policy=policy,
        clock=clock,
        endpoint=f"http://{name}:5001",
    )


async def owned_by(store: StateStore, instance: str) -> set[str]:
    return set((await read_owner_index(store, keys.owner_index_key(instance))).value)


async def make_orphans(store: StateStore, clock: ManualClock, n: int) -> OwnershipService:
    dead = service(store, clock, "pod-dead")
    await dead.heartbeat()
    for i in range(n):
        await dead.create(
            f"c{i}",
            f"wss://example.com/{i}",
            auto_reconnect=i % 2 == 0,
            topic="t",
            tags={"i": str(i)},
        )
    clock.advance(61 + 1)  # heartbeat and records now older than the thresholds (R4, R6)
    return dead


async def test_r2_create_writes_record_and_both_indexes(store: StateStore) -> None:
    clock = ManualClock()
    a = service(store, clock, "pod-a")
    stored = await a.create("c1", "wss://example.com", tags={"k": "v"})
    assert stored.record.owner == a.me and stored.record.fencing_token == 1
    assert (await read_id_list(store, keys.CONNECTION_INDEX)).value == ["c1"]
    assert await owned_by(store, "pod-a") == {"c1"}
    assert "pod-a" in (await read_id_list(store, keys.INSTANCE_INDEX)).value
    with pytest.raises(AlreadyExists):
        await a.create("c1", "wss://example.com")


async def test_r2_concurrent_creates_keep_every_index_entry(store: StateStore) -> None:
    clock = ManualClock()
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await asyncio.gather(
        *(s.create(f"{s.me.instance_id}-{i}", "wss://h") for i in range(8) for s in (a, b))
    )
    assert len((await read_id_list(store, keys.CONNECTION_INDEX)).value) == 16
    assert len(await owned_by(store, "pod-a")) == len(await owned_by(store, "pod-b")) == 8


async def test_r3_only_the_owner_updates_and_deletes(store: StateStore) -> None:
    clock = ManualClock()
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await a.heartbeat()
    await a.create("c1", "wss://h")
    with pytest.raises(NotOwner):
        await b.update("c1", lambda r: r.with_changes(topic="x"))
    with pytest.raises(NotOwner):
        await b.delete("c1")
    with pytest.raises(NotOwner):  # R3: stale fencing token
        await a.update("c1", lambda r: r.with_changes(topic="x"), token=7)
    updated = await a.update("c1", lambda r: r.with_changes(topic="x"), token=1)
    assert updated.record.topic == "x"
    await a.delete("c1")
    assert await a.get("c1") is None
    assert (await read_id_list(store, keys.CONNECTION_INDEX)).value == []
    with pytest.raises(NotFound):
        await a.delete("c1")


async def test_r8_an_owner_past_its_renew_deadline_may_not_act(store: StateStore) -> None:
    clock = ManualClock()
    a = service(store, clock, "pod-a")
    await a.heartbeat()
    await a.create("c1", "wss://h")
    clock.advance(POLICY.effective_renew_deadline + 1)
    with pytest.raises(SelfFenced):
        await a.update("c1", lambda r: r.with_changes(topic="x"))
    # A heartbeat after the lapse is not enough: records may have been taken meanwhile. Only
    # re-reading them (re-confirmation) lets the owner act again (R8).
    await a.heartbeat()
    with pytest.raises(SelfFenced):
        await a.update("c1", lambda r: r.with_changes(topic="x"))
    report = await a.reconfirm()
    assert report.renewed == {"c1": 1} and not report.lost
    await a.update("c1", lambda r: r.with_changes(topic="x"))


async def test_r1_a_newer_incarnation_supersedes_the_old_one(store: StateStore) -> None:
    clock = ManualClock()
    old = service(store, clock, "pod-a", incarnation="0001")
    new = service(store, clock, "pod-a", incarnation="0002")
    await old.heartbeat()
    await new.heartbeat()
    with pytest.raises(SelfFenced):
        await old.heartbeat()
    assert old.fenced() and not new.fenced()


async def test_r7_sweep_takes_orphans_keeping_their_data(store: StateStore) -> None:
    clock = ManualClock()
    await make_orphans(store, clock, 5)
    a = service(store, clock, "pod-a")
    await a.heartbeat()
    report = await sweep(a)
    assert sorted(r.id for r in report.taken) == [f"c{i}" for i in range(5)]
    assert report.dead_instances == ["pod-dead"]
    for i in range(5):
        stored = await a.require(f"c{i}")
        assert stored.record.owner == a.me and stored.record.fencing_token == 2
        assert stored.record.topic == "t" and dict(stored.record.tags) == {"i": str(i)}
        expected = ConnectionStatus.CONNECTING if i % 2 == 0 else ConnectionStatus.DISCONNECTED
        assert stored.record.status is expected
    assert await owned_by(store, "pod-a") == {f"c{i}" for i in range(5)}
    assert await owned_by(store, "pod-dead") == set()
    assert (await sweep(a)).taken == []


async def test_r7_two_racing_sweepers_take_each_orphan_exactly_once(store: StateStore) -> None:
    clock = ManualClock()
    await make_orphans(store, clock, 30)
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await a.heartbeat()
    await b.heartbeat()
    ra, rb = await asyncio.gather(sweep(a), sweep(b))
    taken_a, taken_b = {r.id for r in ra.taken}, {r.id for r in rb.taken}
    assert not taken_a & taken_b
    assert taken_a | taken_b == {f"c{i}" for i in range(30)}
    assert await owned_by(store, "pod-a") == taken_a
    assert await owned_by(store, "pod-b") == taken_b
    for i in range(30):
        assert (await a.require(f"c{i}")).record.fencing_token == 2


async def test_r6_a_live_owners_records_are_never_taken(store: StateStore) -> None:
    clock = ManualClock()
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await a.heartbeat()
    await a.create("c1", "wss://h")
    clock.advance(1_000)  # the record is ancient, but its owner keeps heartbeating
    await a.heartbeat()
    await b.heartbeat()
    assert (await sweep(b)).taken == []
    assert (await b.require("c1")).record.owner == a.me


async def test_r6_dead_owner_recently_renewed_waits_for_the_ttl(store: StateStore) -> None:
    clock = ManualClock()
    dead, b = service(store, clock, "pod-dead"), service(store, clock, "pod-b")
    await dead.heartbeat()
    await dead.create("c1", "wss://h")
    clock.advance(61)  # heartbeat stale ...
    await dead.renew_mine()  # ... but the record was just renewed
    await b.heartbeat()
    assert (await sweep(b)).taken == []
    clock.advance(61)
    await b.heartbeat()
    assert [r.id for r in (await sweep(b)).taken] == ["c1"]


async def test_r4_heartbeats_disabled_fall_back_to_record_age(store: StateStore) -> None:
    clock = ManualClock()
    off = LivenessPolicy(heartbeat_interval=0, stale_threshold=60, stale_connection_ttl=60)
    a, b = service(store, clock, "pod-a", policy=off), service(store, clock, "pod-b", policy=off)
    await a.create("c1", "wss://h")
    await a.renew_mine()
    assert not a.fenced()
    clock.advance(30)
    await a.renew_mine()
    clock.advance(30)
    assert (await sweep(b)).taken == []  # renewed 30 s ago: not stale
    clock.advance(31)
    assert [r.id for r in (await sweep(b)).taken] == ["c1"]
    report = await a.renew_mine(held={"c1"})
    assert report.lost == {"c1"} and report.renewed == {}


async def test_r5_a_sweep_with_the_store_failing_takes_nothing(store: StateStore) -> None:
    clock = ManualClock()
    await make_orphans(store, clock, 3)
    a = service(store, clock, "pod-a")
    await a.heartbeat()
    failing = service(FailingStore(store), clock, "pod-a")  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        await sweep(failing)
    assert await owned_by(store, "pod-dead") == {"c0", "c1", "c2"}


async def test_r11_release_hands_records_over_at_once(store: StateStore) -> None:
    clock = ManualClock()
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await a.heartbeat()
    await b.heartbeat()
    await a.create("c1", "wss://h", auto_reconnect=True)
    released = await a.release_all()
    assert released == ["c1"]
    record = (await b.require("c1")).record
    assert record.owner is None and record.fencing_token == 2
    assert "pod-a" not in await b.heartbeats()
    report = await sweep(b)  # no waiting for any TTL
    assert [r.id for r in report.taken] == ["c1"]
    assert (await b.require("c1")).record.fencing_token == 3


async def test_r1_predecessor_records_are_reclaimed_not_kept(store: StateStore) -> None:
    clock = ManualClock()
    old = service(store, clock, "pod-a", incarnation="0001")
    await old.heartbeat()
    await old.create("c1", "wss://h", auto_reconnect=True)
    clock.advance(62)
    new = service(store, clock, "pod-a", incarnation="0002")
    await new.heartbeat()
    assert await new.my_records() == {}
    report = await sweep(new)
    assert [r.id for r in report.taken] == ["c1"]
    assert (await new.require("c1")).record.owner == new.me


async def test_r10_clear_all_deletes_records_and_indexes(store: StateStore) -> None:
    clock = ManualClock()
    a = service(store, clock, "pod-a")
    await a.heartbeat()
    for i in range(3):
        await a.create(f"c{i}", "wss://h")
    assert await a.clear_all() == 3
    assert await a.list_all() == []
    assert await owned_by(store, "pod-a") == set()
    assert await a.get("c0") is None


async def test_r12_sweep_prunes_index_entries_of_expired_records(store: StateStore) -> None:
    clock = ManualClock()
    await make_orphans(store, clock, 2)
    await store.delete(keys.connection_key("c0"))  # as if the GC TTL had expired it
    a = service(store, clock, "pod-a")
    await a.heartbeat()
    report = await sweep(a)
    assert [r.id for r in report.taken] == ["c1"] and report.pruned == 1
    assert (await read_id_list(store, keys.CONNECTION_INDEX)).value == ["c1"]


class FailingStore:
    """Wraps a real store and fails every call, as an unreachable backend would."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        async def fail(*_: object, **__: object) -> None:
            raise StoreUnavailable("store is down")

        return fail


async def test_r7_an_unregistered_sweeper_stays_findable_after_a_takeover(
    store: StateStore,
) -> None:
    """Found by the spec: with heartbeats off, b never registered; it takes c1 and dies. A
    third instance must still find c1 through the instance index and take it."""
    clock = ManualClock()
    off = LivenessPolicy(heartbeat_interval=0, stale_threshold=60, stale_connection_ttl=60)
    a = service(store, clock, "pod-a", policy=off)
    b = service(store, clock, "pod-b", policy=off)
    c = service(store, clock, "pod-c", policy=off)
    await a.create("c1", "wss://h")
    clock.advance(61)
    assert [r.id for r in (await sweep(b)).taken] == ["c1"]
    assert "pod-b" in (await read_id_list(store, keys.INSTANCE_INDEX)).value
    clock.advance(61)  # b died without renewing
    assert [r.id for r in (await sweep(c)).taken] == ["c1"]
    assert (await c.require("c1")).record.owner == c.me
