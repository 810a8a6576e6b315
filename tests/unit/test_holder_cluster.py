"""The cluster pieces that need no network: lazy reclaim of one record (R3 -> R6/R7), the fencing
token header (R3), self-fence counting (R8), peer discovery (R4) and ``--instances`` ports."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from wsmanager.adapters.memory import MemoryStateStore
from wsmanager.clock import ManualClock
from wsmanager.config import Settings
from wsmanager.core import keys
from wsmanager.core.errors import ConfigError, InvalidArgument, StoreUnavailable
from wsmanager.core.model import Owner
from wsmanager.core.ownership import LivenessPolicy
from wsmanager.holder.discovery import PeerDirectory
from wsmanager.holder.fencing import FenceGate
from wsmanager.holder.forwarding import fencing_token_of
from wsmanager.holder.instances import child_overrides
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.indexes import read_owner_index
from wsmanager.ownership import OwnershipService
from wsmanager.reclaim import ClaimOutcome, reclaim_one

POLICY = LivenessPolicy(heartbeat_interval=10, stale_threshold=60, stale_connection_ttl=60)
OFF = LivenessPolicy(heartbeat_interval=0, stale_threshold=60, stale_connection_ttl=60)


def service(
    store: MemoryStateStore,
    clock: ManualClock,
    name: str,
    incarnation: str = "1",
    policy: LivenessPolicy = POLICY,
) -> OwnershipService:
    return OwnershipService(
        store, me=Owner(name, incarnation), policy=policy, clock=clock, endpoint=f"http://{name}"
    )


async def owned_by(store: MemoryStateStore, instance: str) -> dict[str, str]:
    return (await read_owner_index(store, keys.owner_index_key(instance))).value


async def test_r6_lazy_reclaim_takes_only_an_eligible_record() -> None:
    store, clock = MemoryStateStore(), ManualClock()
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await a.heartbeat()
    await b.heartbeat()
    await a.create("c1", "wss://example.com/1", auto_reconnect=True, topic="t")
    assert (await reclaim_one(b, "missing")).outcome is ClaimOutcome.NOT_FOUND
    assert (await reclaim_one(a, "c1")).outcome is ClaimOutcome.MINE
    # R6: an alive owner is never reclaimed.
    assert (await reclaim_one(b, "c1")).outcome is ClaimOutcome.OWNER_ALIVE
    # Dead (stale heartbeat) but renewed recently: not yet.
    clock.advance(61)
    await a.renew_mine()
    await b.heartbeat()
    assert (await reclaim_one(b, "c1")).outcome is ClaimOutcome.NOT_STALE
    # Dead and unrenewed for the TTL: taken, by CAS, token + 1, indexes moved (R7).
    clock.advance(61)
    claim = await reclaim_one(b, "c1")
    assert claim.outcome is ClaimOutcome.TAKEN and claim.previous_owner == a.me
    assert claim.record is not None and claim.record.owner == b.me
    assert (claim.record.fencing_token, claim.record.topic) == (2, "t")
    stored = await b.require("c1")
    assert stored.record == claim.record
    assert await owned_by(store, "pod-a") == {}
    assert await owned_by(store, "pod-b") == {"c1": "1"}
    assert (await reclaim_one(b, "c1")).outcome is ClaimOutcome.MINE


async def test_r11_a_released_record_is_taken_at_once() -> None:
    store, clock = MemoryStateStore(), ManualClock()
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await a.heartbeat()
    await a.create("c1", "wss://example.com/1")
    await a.release_all()
    claim = await reclaim_one(b, "c1")
    assert claim.outcome is ClaimOutcome.TAKEN and claim.previous_owner is None
    assert claim.record is not None and claim.record.fencing_token == 3
    assert await owned_by(store, keys.UNOWNED) == {}


async def test_r1_a_predecessor_incarnations_record_is_taken_by_the_new_one() -> None:
    store, clock = MemoryStateStore(), ManualClock()
    old = service(store, clock, "pod-a", "1")
    await old.heartbeat()
    await old.create("c1", "wss://example.com/1", auto_reconnect=True)
    clock.advance(1)
    new = service(store, clock, "pod-a", "2")
    await new.heartbeat()  # the heartbeat now names incarnation 2: "1" is dead (R1)
    assert (await reclaim_one(new, "c1")).outcome is ClaimOutcome.NOT_STALE
    clock.advance(61)
    await new.heartbeat()
    claim = await reclaim_one(new, "c1")
    assert claim.outcome is ClaimOutcome.TAKEN and claim.previous_owner == old.me
    assert await owned_by(store, "pod-a") == {"c1": "2"}


async def test_r4_r6_with_heartbeats_off_record_age_decides() -> None:
    store, clock = MemoryStateStore(), ManualClock()
    a, b = service(store, clock, "pod-a", policy=OFF), service(store, clock, "pod-b", policy=OFF)
    await a.heartbeat()  # the registration record: no liveness signal with heartbeats off
    await a.create("c1", "wss://example.com/1")
    assert (await reclaim_one(b, "c1")).outcome is ClaimOutcome.NOT_STALE
    clock.advance(61)
    assert (await reclaim_one(b, "c1")).outcome is ClaimOutcome.TAKEN


async def test_r5_a_failing_store_takes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    store, clock = MemoryStateStore(), ManualClock()
    a, b = service(store, clock, "pod-a"), service(store, clock, "pod-b")
    await a.create("c1", "wss://example.com/1")
    clock.advance(200)

    async def failing(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(store, "get", failing)
    with pytest.raises(StoreUnavailable):
        await reclaim_one(b, "c1")
    monkeypatch.undo()
    assert (await a.require("c1")).record.owner == a.me


@pytest.mark.parametrize(
    ("header", "expected"), [(None, None), ("0", 0), (" 7 ", 7), ("12345", 12345)]
)
def test_r3_fencing_token_header(header: str | None, expected: int | None) -> None:
    headers = {} if header is None else {"X-Wsm-Fencing-Token": header}
    request = make_mocked_request("POST", "/v1/connections/x/send", headers=headers)
    assert fencing_token_of(request) == expected


@pytest.mark.parametrize("header", ["", "-1", "1.5", "one", "²", "9" * 40])
def test_r3_a_bad_fencing_token_header_is_invalid(header: str) -> None:
    request = make_mocked_request(
        "POST", "/v1/connections/x/send", headers={"X-Wsm-Fencing-Token": header}
    )
    with pytest.raises(InvalidArgument):
        fencing_token_of(request)


async def test_r8_self_fence_events_count_each_closing_of_an_open_gate() -> None:
    clock = ManualClock()
    ownership = service(MemoryStateStore(), clock, "pod-a")
    gate = FenceGate(ownership)
    fenced: list[int] = []
    gate.on_fence = lambda: fenced.append(1)
    assert not gate.may_act() and fenced == []  # starts closed: not a fence event
    await ownership.heartbeat()
    gate.confirmed(ownership.last_renewal_at)
    assert gate.may_act()
    clock.advance(POLICY.effective_renew_deadline + 1)
    assert not gate.may_act() and not gate.may_act()
    assert fenced == [1]


async def test_r4_discovery_keeps_live_peers_and_endpoints() -> None:
    store, clock = MemoryStateStore(), ManualClock()
    a, b, c = (service(store, clock, f"pod-{n}") for n in "abc")
    for s in (a, b, c):
        await s.heartbeat(connection_count={"pod-a": 3, "pod-b": 1, "pod-c": 2}[s.me.instance_id])
    metrics = HolderMetrics()
    directory = PeerDirectory(a, interval=1.0, metrics=metrics)
    assert set(await directory.refresh()) == {"pod-a", "pod-b", "pod-c"}
    assert [p.instance_id for p in directory.peers()] == ["pod-b", "pod-c"]  # least loaded first
    assert metrics.live_peers._value.get() == 3  # type: ignore[attr-defined]
    beat = await directory.heartbeat_of(b.me)
    assert beat is not None and beat.endpoint == "http://pod-b"
    clock.advance(61)  # everyone's heartbeat is stale now
    await b.heartbeat()
    assert set(await directory.refresh()) == {"pod-b"}
    # A restarted pod-c (new incarnation): the old owner's heartbeat is not found alive.
    c2 = service(store, clock, "pod-c", "2")
    await c2.heartbeat()
    beat = await directory.heartbeat_of(c.me)
    assert beat is not None and beat.owner == c2.me


def test_instances_need_valid_counts_and_ports() -> None:
    settings = Settings.load(environ={"HttpPort": "65535", "GrpcPort": "5002"})
    with pytest.raises(ConfigError):
        child_overrides(settings, 1, 2)
    with pytest.raises(ConfigError):
        child_overrides(Settings.load(environ={}), 1, 0)
