"""Rule violations the state machine found in an earlier version of the service, as stories.

Each test is a shrunk failing example of ``test_ownership_spec.py`` retold step by step on the
memory store, so it reads as a story and fails deterministically should the bug come back.
The docstrings say what was found and how it was fixed.

Setting: the default timing (heartbeat every 10 s, a peer is dead 60 s after its last
heartbeat, a record may be taken 60 s after its last renewal, so an owner must fence itself 40 s
after its last renewal, R8).
"""

from __future__ import annotations

import pytest

from wsmanager import reclaim
from wsmanager.adapters.memory import MemoryStateStore
from wsmanager.clock import ManualClock
from wsmanager.core.errors import NotOwner, SelfFenced
from wsmanager.core.model import Owner, new_incarnation
from wsmanager.core.ownership import LivenessPolicy
from wsmanager.ownership import OwnershipService

T0 = 1_700_000_000.0
DEFAULTS = LivenessPolicy(heartbeat_interval=10, stale_threshold=60, stale_connection_ttl=60)
NO_HEARTBEATS = LivenessPolicy(heartbeat_interval=0, stale_threshold=60, stale_connection_ttl=60)


class Cluster:
    """Processes sharing one memory store and one clock."""

    def __init__(self, policy: LivenessPolicy) -> None:
        self.policy = policy
        self.clock = ManualClock(T0)
        self.store = MemoryStateStore()
        self.started = 0

    async def start(self, hostname: str) -> OwnershipService:
        """A holder's start-up: announce itself (R4), re-confirm (R8), then serve."""
        self.started += 1
        me = Owner(hostname, new_incarnation(self.clock.now(), f"{self.started:06d}"))
        service = OwnershipService(self.store, me=me, policy=self.policy, clock=self.clock)
        if self.policy.heartbeats_enabled:
            await service.heartbeat()
        await service.reconfirm()
        return service


def refused(service: OwnershipService, record: object) -> bool:
    try:
        service.check_may_act(record)  # type: ignore[arg-type]
    except (NotOwner, SelfFenced):
        return True
    return False


async def test_r8_a_woken_owner_must_reconfirm_before_acting_even_after_a_heartbeat() -> None:
    """R8. pod-a owns c1 and freezes; 61 s later pod-b takes c1 over (token 2). pod-a wakes
    and its heartbeat loop runs first: the heartbeat succeeds. pod-a must still not send on
    c1, because it has not re-read its records yet.

    Found: ``heartbeat()`` reset the renew deadline, so ``check_may_act`` let the deposed
    owner send with its stale view (token 1). Fix: a heartbeat that finds the deadline already
    lapsed keeps ``fenced()`` true until a ``reconfirm()`` started after it has completed."""
    cluster = Cluster(DEFAULTS)
    a = await cluster.start("pod-a")
    b = await cluster.start("pod-b")
    c1 = (await a.create("c1", "wss://feed.example.com/c1")).record
    cluster.clock.advance(61)  # pod-a is frozen all along
    await b.heartbeat()
    assert [r.id for r in (await reclaim.sweep(b)).taken] == ["c1"]
    await a.heartbeat()  # pod-a wakes; its heartbeat loop runs first
    assert refused(a, c1), "a deposed owner was allowed to send after a mere heartbeat"


@pytest.mark.parametrize("policy", [DEFAULTS, NO_HEARTBEATS], ids=["heartbeats", "no-heartbeats"])
async def test_r8_reconfirm_reports_connections_taken_over_meanwhile(
    policy: LivenessPolicy,
) -> None:
    """R8. pod-a owns c1 and freezes; pod-b takes c1 over. pod-a wakes and re-confirms, as
    R8 demands: the report must list c1 as lost, so pod-a closes that socket.

    Found: ``renew_mine()`` compared the owner index with the records, but the takeover had
    already removed c1 from pod-a's index: c1 was in neither ``renewed`` nor ``lost``, and the
    holder kept sending on it (with heartbeats off, re-confirming even lifted the fence).
    Fix: every record the process created, took or renewed (and every ``held`` one) that is no
    longer its own is reported lost."""
    cluster = Cluster(policy)
    a = await cluster.start("pod-a")
    b = await cluster.start("pod-b")
    await a.create("c1", "wss://feed.example.com/c1")
    cluster.clock.advance(61)
    if policy.heartbeats_enabled:
        await b.heartbeat()
    assert [r.id for r in (await reclaim.sweep(b)).taken] == ["c1"]
    if policy.heartbeats_enabled:
        await a.heartbeat()
    report = await a.reconfirm()
    assert "c1" in report.lost, f"c1 was taken over but the report says {report}"


async def test_r1_r8_a_replaced_frozen_pod_must_not_act_when_it_wakes() -> None:
    """R1 + R8. pod-a (incarnation 1) owns c1, last renewed at T0, and heartbeats at T0+30;
    then it freezes. Kubernetes starts a replacement with the same HOSTNAME (incarnation 2),
    whose heartbeat replaces the old one: incarnation 1 now counts as dead (R1). At T0+61 the
    record is older than the 60 s TTL and incarnation 2 takes c1 over (R6, R7). Incarnation 1
    wakes at T0+61 and tries to send on c1: it must be refused (R8).

    Found: incarnation 1 renewed its heartbeat 31 s ago, within its 40 s deadline, so it was not
    fenced, and ``check_may_act`` let it send. Its death was decided by the heartbeat key
    changing hands, not by time, so only the record's age protected c1. Fix: with heartbeats
    on, the owner also fences 40 s after its last record renewal (``renew_mine``), since a
    takeover always needs a TTL-stale record."""
    cluster = Cluster(DEFAULTS)
    old = await cluster.start("pod-a")
    c1 = (await old.create("c1", "wss://feed.example.com/c1")).record
    cluster.clock.advance(30)
    await old.heartbeat()  # healthy; its records were last renewed at T0
    new = await cluster.start("pod-a")  # the old process is frozen from here on
    cluster.clock.advance(31)
    await new.heartbeat()
    assert [r.id for r in (await reclaim.sweep(new)).taken] == ["c1"]
    assert refused(old, c1), "a superseded, deposed process was allowed to send on c1"
