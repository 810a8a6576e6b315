"""The ownership state machine: several holder processes, one shared store, one shared clock.

:class:`OwnershipSpec` is a hypothesis ``RuleBasedStateMachine``. Each simulated process is a
real :class:`~wsmanager.ownership.OwnershipService` with its own store object on one real state
store (memory, SQLite or Redis), and every process reads the same
:class:`~wsmanager.clock.ManualClock`. Rules start, crash, pause, resume, drain and restart
processes, connect, heartbeat, re-confirm, sweep (several processes at once, as real asyncio
tasks), forward commands and try to send or publish. Each rule also runs on the reference
model (``spec/model.py``). After every step the invariants below check the rules of the brief:

======================================  =====================================================
invariant                               rule
======================================  =====================================================
``r2_r8_at_most_one_instance_may_act``  R2, R3, R8: per connection at most one process may
                                        act, and only the owner named by the stored record,
                                        with the current fencing token
``r2_fencing_tokens_never_decrease``    R2: tokens never go down; a new owner means a new token
``r2_no_record_lost_or_duplicated``     R2, R11, R10: every record present once, indexes agree
``r6_live_owner_never_taken``           R6, R5, R1: only reclaimable records are taken
``r7_orphans_taken_by_first_sweep``     R7: every orphan goes to exactly one live sweeper, at
                                        the first sweep after it becomes reclaimable
``r8_deposed_owner_is_refused``         R8: a deposed owner's send or publish is refused
``reference_model_agrees``              all: records and heartbeats equal the model's
======================================  =====================================================

Some checks need the moment of an operation rather than the state after it (a sweep's
takeovers, an attempted send); rules record those as *events* of the step, and the invariants
check them. Rules also check, where they happen, R1 (a new incarnation keeps nothing of its
predecessor), R3 (non-owners are refused, forward, or reclaim), R4 (peer discovery) and R8
(re-confirmation reports every lost record).

What a process does maps onto the service like a holder would use it:

* start: announce itself (heartbeat, or register when heartbeats are off), optionally clear
  everything first (R10); a ``HOSTNAME`` may be reused (a new incarnation, R1);
* send / publish on a connection it believes it owns: ``check_may_act`` with its local view of
  the record (no store read: that is what self-fencing, R8, is for);
* re-confirm (R8, R6): ``reconfirm()``; it closes the sockets the report lists as lost, adopts
  records it owns but holds no socket for, and updates the tokens;
* crash: it stops for good; pause: it runs nothing, then wakes with its old view.

Replays: what a rule draws depends only on state that does not depend on timing (which
processes run, which connection ids were ever created, the clock), never on which of two
concurrent sweepers won, so Hypothesis can replay and shrink runs on Redis and SQLite too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from spec.model import Model, ModelOwner, ModelPolicy, ModelRecord
from spec.stores import FailingStore, SpecBackend, YieldingStore
from wsmanager import reclaim
from wsmanager.clock import ManualClock
from wsmanager.core import keys
from wsmanager.core.errors import NotOwner, SelfFenced, StoreUnavailable
from wsmanager.core.model import ConnectionRecord, Owner, new_incarnation
from wsmanager.core.ownership import LivenessPolicy
from wsmanager.ownership import OwnershipService

__all__ = ["OwnershipSpec", "POLICIES", "RuleViolation", "SpecPolicy"]

P = ParamSpec("P")
T = TypeVar("T")

T0 = 1_700_000_000.0
#: Pod names (HOSTNAME) that processes draw from: few, so restarts reuse them (R1).
HOSTNAMES = ("pod-a", "pod-b", "pod-c", "pod-d")
#: At most this many processes are running or paused at once.
MAX_LIVE = 5
#: CONNECTION_RECORD_TTL_SECONDS (R12): written on every record write, in real seconds, so it
#: never fires during an example; ownership must never depend on it.
RECORD_TTL = 3600.0
SMALL_STEPS = (0.5, 1.0, 5.0, 10.0, 15.0, 20.0)
LARGE_STEPS = (30.0, 40.0, 45.0, 60.0, 61.0, 90.0, 200.0)


class RuleViolation(AssertionError):
    """A rule of the design brief is broken. The message starts with the rule's number."""


def require(condition: object, rule_id: str, message: str) -> None:
    if not condition:
        raise RuleViolation(f"{rule_id}: {message}")


@dataclass(frozen=True)
class SpecPolicy:
    """One timing configuration, for the implementation and the model alike."""

    name: str
    heartbeat_interval: float
    stale_threshold: float
    stale_connection_ttl: float

    def __repr__(self) -> str:
        return self.name

    @property
    def liveness(self) -> LivenessPolicy:
        return LivenessPolicy(
            heartbeat_interval=self.heartbeat_interval,
            stale_threshold=self.stale_threshold,
            stale_connection_ttl=self.stale_connection_ttl,
        )

    @property
    def model(self) -> ModelPolicy:
        return ModelPolicy(
            heartbeat_interval=self.heartbeat_interval,
            stale_threshold=self.stale_threshold,
            stale_connection_ttl=self.stale_connection_ttl,
        )


POLICIES = (
    SpecPolicy("defaults(10/60/60)", 10.0, 60.0, 60.0),
    SpecPolicy("heartbeats-off(0/-/60)", 0.0, 60.0, 60.0),  # R4: interval 0, age decides
    SpecPolicy("short-ttl(10/60/30)", 10.0, 60.0, 30.0),
    SpecPolicy("short-stale(10/30/60)", 10.0, 30.0, 60.0),
)


@dataclass
class Process:
    """One holder process (pod) as the spec sees it."""

    label: str
    owner: ModelOwner
    service: OwnershipService
    #: running | paused | crashed | drained | superseded
    state: str = "running"
    #: What the process believes it owns: the record as it last saw it (its sockets).
    view: dict[str, ConnectionRecord] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.label} {self.state}>"


@dataclass(frozen=True)
class Takeover:
    connection_id: str
    previous_owner: ModelOwner | None
    new_owner: ModelOwner
    allowed_winners: frozenset[ModelOwner]  # empty: the model did not allow this takeover
    previous_owner_alive: bool


@dataclass(frozen=True)
class ActAttempt:
    process: str
    owner: ModelOwner
    connection_id: str
    token: int
    kind: str  # send | sendraw | publish


@dataclass
class Snapshot:
    """Everything the store holds for this example, read back after a step."""

    records: dict[str, ConnectionRecord]
    global_index: list[str]
    owner_indexes: dict[str, dict[str, str]]  # instance id (or keys.UNOWNED) -> id -> incarnation
    heartbeats: dict[str, tuple[str, float]]  # instance id -> (incarnation, last_seen_at)


def step(method: Callable[P, T]) -> Callable[P, T]:
    """Marks a rule: clears the previous step's events and snapshot before it runs."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        machine = args[0]
        assert isinstance(machine, OwnershipSpec)
        machine.begin_step()
        return method(*args, **kwargs)

    return wrapper


class OwnershipSpec(RuleBasedStateMachine):
    """Rules R1-R12 as a state machine over the real service, store and a shared clock."""

    def __init__(self, backend: SpecBackend) -> None:
        super().__init__()
        self.backend = backend
        self.runner = asyncio.Runner()
        self.prefix = f"wsm-spec-{uuid.uuid4().hex}:"  # this example's keys, dropped at the end
        self.observer = backend.make(self.prefix)  # the spec's own reads of the store
        self.clock = ManualClock(T0)
        self.policy = POLICIES[0]
        self.model = Model(self.policy.model, now=T0)
        self.processes: list[Process] = []
        self.incarnations: dict[str, int] = {}  # implementation incarnation -> model number
        self.instance_ids: set[str] = set()
        self.next_incarnation = 0
        self.next_connection = 0
        self.ever_created: set[str] = set()
        self.cleared: dict[str, ModelOwner | None] = {}  # R10: id -> owner when it was cleared
        self.last_seen: dict[str, tuple[Owner | None, int]] = {}  # id -> (owner, token)
        self.step_no = 0
        self._snapshot: tuple[int, Snapshot] | None = None
        self.takeovers: list[Takeover] = []
        self.missed: list[tuple[str, set[ModelOwner]]] = []
        self.acts: list[ActAttempt] = []

    # -- plumbing -------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def begin_step(self) -> None:
        self.step_no += 1
        self.takeovers.clear()
        self.missed.clear()
        self.acts.clear()

    def teardown(self) -> None:
        async def close() -> None:
            try:
                for process in self.processes:
                    await process.service.store.close()
                await self.observer.close()
            finally:
                await self.backend.drop(self.prefix)

        try:
            self.run(close())
        finally:
            self.runner.close()

    def processes_in(self, *states: str) -> list[Process]:
        return [p for p in self.processes if p.state in states]

    def draw_process(self, data: st.DataObject, *states: str, label: str = "process") -> Process:
        choices = {p.label: p for p in self.processes_in(*states)}
        return choices[data.draw(st.sampled_from(sorted(choices)), label=label)]

    def has(self, *states: str) -> bool:
        return bool(self.processes_in(*states))

    def model_owner(self, owner: Owner | None) -> ModelOwner | None:
        if owner is None:
            return None
        return ModelOwner(owner.instance_id, self.incarnations[owner.incarnation])

    def process_of(self, owner: ModelOwner | None) -> Process | None:
        return next((p for p in self.processes if p.owner == owner), None)

    # -- reading the store back -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if self._snapshot is None or self._snapshot[0] != self.step_no:
            self._snapshot = (self.step_no, self.run(self._read()))
        return self._snapshot[1]

    async def _read(self) -> Snapshot:
        store = self.observer
        raw = await store.bulk_get([keys.connection_key(i) for i in sorted(self.ever_created)])
        records = {r.id: r for r in (ConnectionRecord.from_json(v.value) for v in raw.values())}
        glob = await store.get(keys.CONNECTION_INDEX)
        global_index = [] if glob is None else list(json.loads(glob.value))
        owner_ids = sorted(self.instance_ids | {keys.UNOWNED})
        raw_indexes = await store.bulk_get([keys.owner_index_key(i) for i in owner_ids])
        owner_indexes = {
            i: dict(json.loads(raw_indexes[keys.owner_index_key(i)].value))
            for i in owner_ids
            if keys.owner_index_key(i) in raw_indexes
        }
        raw_beats = await store.bulk_get([keys.heartbeat_key(i) for i in sorted(self.instance_ids)])
        heartbeats = {}
        for value in raw_beats.values():
            beat = json.loads(value.value)
            heartbeats[beat["instance_id"]] = (beat["incarnation"], float(beat["last_seen_at"]))
        return Snapshot(records, global_index, owner_indexes, heartbeats)

    # -- starting processes (R1, R4, R10) -------------------------------------------------------

    def free_hostnames(self) -> list[str]:
        taken = {p.owner.instance_id for p in self.processes_in("running", "paused")}
        return [h for h in HOSTNAMES if h not in taken]

    def launch(self, hostname: str | None, *, clear_all: bool = False) -> Process:
        """Start a process: a new incarnation (R1), announced before it serves (R4)."""
        self.next_incarnation += 1
        number = self.next_incarnation
        # R1: without HOSTNAME every start gets a fresh id (a UUID in production).
        instance_id = hostname or f"anon-{number}"
        incarnation = new_incarnation(self.clock.now(), f"{number:06d}")
        self.incarnations[incarnation] = number
        self.instance_ids.add(instance_id)
        owner = ModelOwner(instance_id, number)
        service = OwnershipService(
            self.backend.make(self.prefix),
            me=Owner(instance_id, incarnation),
            policy=self.policy.liveness,
            clock=self.clock,
            endpoint=f"http://{instance_id}:5001",
            record_ttl=RECORD_TTL,
        )
        process = Process(f"{instance_id}#{number}", owner, service)
        self.processes.append(process)
        if clear_all:  # R10: before the holder serves, delete every record and index
            cleared = self.run(service.clear_all())
            require(
                cleared == len(self.model.records),
                "R10",
                f"clear_all reported {cleared} records, the model had {len(self.model.records)}",
            )
            for record in self.model.records.values():
                self.cleared[record.id] = record.owner
            self.model.clear_all()
        if self.policy.heartbeat_interval > 0:
            self.run(service.heartbeat())
            require(self.model.heartbeat(owner), "R1", f"a fresh process {owner} was superseded")
        else:
            self.run(service.register())
        self.reconfirm_of(process)  # R8: a holder confirms what it owns before it serves
        # R1: a new incarnation never silently keeps its predecessor's connections.
        for inherited in self.snapshot_records_of(instance_id):
            if inherited.owner is not None and inherited.owner != service.me:
                try:
                    service.check_may_act(inherited)
                except NotOwner:
                    continue
                raise RuleViolation(
                    f"R1: new incarnation {process.label} may act on {inherited.id}, "
                    f"owned by its predecessor {inherited.owner}"
                )
        return process

    def snapshot_records_of(self, instance_id: str) -> list[ConnectionRecord]:
        async def read() -> list[ConnectionRecord]:
            ids = sorted(self.model.records)
            raw = await self.observer.bulk_get([keys.connection_key(i) for i in ids])
            records = [ConnectionRecord.from_json(v.value) for v in raw.values()]
            return [r for r in records if r.owner and r.owner.instance_id == instance_id]

        return self.run(read())

    @initialize(policy=st.sampled_from(POLICIES))
    def start_cluster(self, policy: SpecPolicy) -> None:
        """Three holders start with the drawn timing policy (R4: maybe heartbeats off)."""
        self.begin_step()
        self.policy = policy
        self.model = Model(policy.model, now=T0)
        for hostname in HOSTNAMES[:3]:
            self.launch(hostname)

    @precondition(lambda self: len(self.processes_in("running", "paused")) < MAX_LIVE)
    @rule(data=st.data())
    @step
    def start_process(self, data: st.DataObject) -> None:
        """R1: a process starts, reusing a free HOSTNAME or with none (a fresh id)."""
        names: list[str | None] = [*self.free_hostnames(), None]
        self.launch(data.draw(st.sampled_from(names), label="HOSTNAME"))

    @precondition(lambda self: len(self.processes_in("running", "paused")) < MAX_LIVE)
    @rule(data=st.data())
    @step
    def start_with_clear_all_on_start(self, data: st.DataObject) -> None:
        """R10: CLEAR_ALL_ON_START=TRUE deletes every record and index before serving."""
        names: list[str | None] = [*self.free_hostnames(), None]
        self.launch(data.draw(st.sampled_from(names), label="HOSTNAME"), clear_all=True)

    def frozen_named_pods(self) -> list[Process]:
        return [p for p in self.processes_in("paused") if p.owner.instance_id in HOSTNAMES]

    @precondition(
        lambda self: (
            len(self.processes_in("running", "paused")) < MAX_LIVE
            and bool(self.frozen_named_pods())
        )
    )
    @rule(data=st.data())
    @step
    def replace_paused_pod(self, data: st.DataObject) -> None:
        """R1: Kubernetes gives up on a frozen pod and starts a new incarnation under the same
        HOSTNAME while the old process is still paused (it may wake later: R8)."""
        choices = {p.label: p for p in self.frozen_named_pods()}
        old = choices[data.draw(st.sampled_from(sorted(choices)), label="frozen pod")]
        self.launch(old.owner.instance_id)

    @precondition(
        lambda self: (
            len(self.processes_in("running", "paused")) < MAX_LIVE
            and any(p.owner.instance_id in HOSTNAMES for p in self.processes_in("running"))
        )
    )
    @rule(
        data=st.data(),
        gap=st.sampled_from([0.0, 10.0, 21.0, 30.0, 45.0]),
        frozen_for=st.sampled_from([10.0, 20.0, 31.0, 40.0, 61.0]),
    )
    @step
    def pod_frozen_and_replaced(self, data: st.DataObject, gap: float, frozen_for: float) -> None:
        """R1 + R8, a whole story in one step. A pod holding a connection re-confirms its
        records, then for ``gap`` seconds only heartbeats (every heartbeat interval), and
        freezes. Kubernetes starts a new
        incarnation under the same HOSTNAME; while the old process stays frozen for
        ``frozen_for`` seconds, the new one heartbeats and sweeps (taking its predecessor's
        orphans, R7). Then the old process wakes with its old view: it must not act on what
        was taken (R8), and its next heartbeat tells it that it is superseded (R1)."""
        choices = {
            p.label: p for p in self.processes_in("running") if p.owner.instance_id in HOSTNAMES
        }
        old = choices[data.draw(st.sampled_from(sorted(choices)), label="pod")]
        if not old.view:
            self.open_connection(old, auto_reconnect=True, topic="prices")
        self.reconfirm_of(old)
        interval = self.policy.heartbeat_interval or gap
        while True:  # its heartbeat loop keeps running; its record renewal does not
            elapsed = min(interval, gap)
            self.clock.advance(elapsed)
            self.model.advance(elapsed)
            gap -= elapsed
            if self.policy.heartbeat_interval > 0:
                self.heartbeat_of(old)
                if old.state != "running":
                    return
            if gap <= 0:
                break
        old.state = "paused"
        new = self.launch(old.owner.instance_id)
        self.clock.advance(frozen_for)
        self.model.advance(frozen_for)
        if self.policy.heartbeat_interval > 0:
            self.heartbeat_of(new)
        self.sweep_by([new])
        old.state = "running"

    # -- process lifecycle ----------------------------------------------------------------------

    @precondition(lambda self: self.has("running", "paused"))
    @rule(data=st.data())
    @step
    def crash(self, data: st.DataObject) -> None:
        """A process dies: no more heartbeats, no drain; its records stay as orphans."""
        self.draw_process(data, "running", "paused").state = "crashed"

    @precondition(lambda self: self.has("running"))
    @rule(data=st.data())
    @step
    def pause(self, data: st.DataObject) -> None:
        """A process freezes (GC pause, SIGSTOP, partition): it runs nothing until resumed."""
        self.draw_process(data, "running").state = "paused"

    @precondition(lambda self: self.has("paused"))
    @rule(data=st.data())
    @step
    def resume(self, data: st.DataObject) -> None:
        """A paused process wakes with the view it had; the clock moved on meanwhile."""
        self.draw_process(data, "paused").state = "running"

    @precondition(lambda self: self.has("paused"))
    @rule(data=st.data(), kind=st.sampled_from(["send", "publish"]))
    @step
    def wake_up_and_act(self, data: st.DataObject, kind: str) -> None:
        """R8: a paused process wakes and at once tries to act on every socket it holds.
        If its connections were taken over meanwhile, it must not send or publish once."""
        process = self.draw_process(data, "paused")
        process.state = "running"
        for connection_id in sorted(process.view):
            self.try_act(process, connection_id, kind)

    @precondition(lambda self: self.has("running"))
    @rule(data=st.data())
    @step
    def drain(self, data: st.DataObject) -> None:
        """R11: SIGTERM: release every record (ownerless at once), delete the heartbeat."""
        process = self.draw_process(data, "running")
        released = self.run(process.service.release_all())
        expected = self.model.release_all(process.owner)
        require(
            sorted(released) == expected,
            "R11",
            f"{process.label} released {sorted(released)}, it owned {expected}",
        )
        process.state = "drained"
        process.view.clear()

    # -- time, heartbeats, re-confirmation (R4, R6, R8) ---------------------------------------

    @rule(seconds=st.sampled_from(SMALL_STEPS))
    @step
    def advance_clock_a_little(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.advance(seconds)

    @rule(seconds=st.sampled_from(LARGE_STEPS))
    @step
    def advance_clock_a_lot(self, seconds: float) -> None:
        """Longer than renew deadlines, stale thresholds and TTLs: owners lapse."""
        self.clock.advance(seconds)
        self.model.advance(seconds)

    def heartbeat_of(self, process: Process) -> None:
        """R4 (and R1: a process superseded by a newer incarnation stops for good)."""
        try:
            self.run(process.service.heartbeat(len(process.view)))
        except SelfFenced:
            require(
                not self.model.heartbeat(process.owner),
                "R1",
                f"{process.label} was refused its heartbeat, but no newer incarnation exists",
            )
            process.state = "superseded"
            process.view.clear()
            return
        require(
            self.model.heartbeat(process.owner),
            "R1",
            f"{process.label} wrote a heartbeat over a newer incarnation's",
        )

    @precondition(lambda self: self.has("running") and self.policy.heartbeat_interval > 0)
    @rule(data=st.data())
    @step
    def heartbeat(self, data: st.DataObject) -> None:
        """R4: one process writes its heartbeat."""
        self.heartbeat_of(self.draw_process(data, "running"))

    def reconfirm_of(self, process: Process) -> None:
        """R8/R6: re-read and renew my records; drop the lost ones, adopt unknown ones."""
        before = dict(process.view)
        report = self.run(process.service.reconfirm(held=sorted(process.view)))
        renewed = self.model.renew(process.owner)
        require(
            report.renewed == renewed,
            "R6",
            f"{process.label} renewed {report.renewed}, the model says it owns {renewed}",
        )
        for connection_id, record in sorted(before.items()):
            still_mine = renewed.get(connection_id) == record.fencing_token
            if not still_mine and connection_id not in self.cleared:
                require(
                    connection_id in report.lost,
                    "R8",
                    f"{process.label} held {connection_id} (token {record.fencing_token}) but "
                    f"it is now {self.model.records.get(connection_id)}; re-confirmation must "
                    f"report it lost (report: {report})",
                )
        for connection_id in report.lost:
            process.view.pop(connection_id, None)
        stored = self.snapshot_now(sorted(report.renewed))
        for connection_id in report.renewed:
            process.view[connection_id] = stored[connection_id]

    def snapshot_now(self, ids: list[str]) -> dict[str, ConnectionRecord]:
        async def read() -> dict[str, ConnectionRecord]:
            raw = await self.observer.bulk_get([keys.connection_key(i) for i in ids])
            return {r.id: r for r in (ConnectionRecord.from_json(v.value) for v in raw.values())}

        return self.run(read())

    @precondition(lambda self: self.has("running"))
    @rule(data=st.data())
    @step
    def reconfirm(self, data: st.DataObject) -> None:
        """R8 (and R6: renewal; with heartbeats off this renewal is the owner's lease)."""
        self.reconfirm_of(self.draw_process(data, "running"))

    @precondition(lambda self: self.has("running"))
    @rule(data=st.data())
    @step
    def holder_tick(self, data: st.DataObject) -> None:
        """A healthy holder's periodic work: heartbeat (R4), re-confirm (R6, R8). Afterwards
        it may act on every connection it holds (R3: the owner acts)."""
        process = self.draw_process(data, "running")
        if self.policy.heartbeat_interval > 0:
            self.heartbeat_of(process)
            if process.state != "running":
                return
        self.reconfirm_of(process)
        for connection_id, record in sorted(process.view.items()):
            try:
                process.service.check_may_act(record, record.fencing_token)
            except (NotOwner, SelfFenced) as exc:
                raise RuleViolation(
                    f"R3: {process.label} just renewed its lease and re-confirmed "
                    f"{connection_id}, yet it may not act on it: {exc!r}"
                ) from exc

    # -- connections (R2, R3, R8) ---------------------------------------------------------------

    @precondition(lambda self: self.has("running"))
    @rule(
        data=st.data(),
        auto_reconnect=st.booleans(),
        topic=st.sampled_from([None, "prices"]),
    )
    @step
    def connect(self, data: st.DataObject, auto_reconnect: bool, topic: str | None) -> None:
        """R2: a new connection record, owned by the process that opened it."""
        self.open_connection(self.draw_process(data, "running"), auto_reconnect, topic)

    def open_connection(self, process: Process, auto_reconnect: bool, topic: str | None) -> None:
        self.next_connection += 1
        connection_id = f"c{self.next_connection}"
        url = f"wss://feed.example.com/{connection_id}"
        tags = {"venue": "x"}
        stored = self.run(
            process.service.create(
                connection_id, url, tags=tags, auto_reconnect=auto_reconnect, topic=topic
            )
        )
        self.ever_created.add(connection_id)
        self.model.connect(
            process.owner,
            connection_id,
            url=url,
            topic=topic,
            tags=tags,
            auto_reconnect=auto_reconnect,
        )
        process.view[connection_id] = stored.record

    def try_act(self, process: Process, connection_id: str, kind: str) -> None:
        """Send or publish: allowed only by ``check_may_act`` on the process's own view."""
        record = process.view[connection_id]
        try:
            process.service.check_may_act(record, record.fencing_token)
        except (NotOwner, SelfFenced):
            return  # refused: nothing was sent or published
        self.acts.append(
            ActAttempt(process.label, process.owner, connection_id, record.fencing_token, kind)
        )

    @precondition(lambda self: self.has("running"))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["send", "sendraw", "publish"]),
        pick=st.integers(min_value=0, max_value=63),
    )
    @step
    def act(self, data: st.DataObject, kind: str, pick: int) -> None:
        """R3/R8: a process sends on, or publishes from, a connection it believes it owns
        (the ``pick``-th one it holds, counting round; nothing if it holds none)."""
        process = self.draw_process(data, "running")
        if process.view:
            connection_id = sorted(process.view)[pick % len(process.view)]
            note(f"{process.label} tries to {kind} on {connection_id}")
            self.try_act(process, connection_id, kind)

    def sweep_by(self, sweepers: list[Process], schedule: int = 0) -> None:
        """R7: ``sweepers`` sweep at the same moment, as concurrent asyncio tasks.

        On the memory store ``schedule`` seeds how the tasks interleave (the real stores
        interleave by themselves)."""
        owners = {p.owner for p in sweepers}
        expected = self.model.sweep_expectation(owners)
        before = dict(self.model.records)
        interleaving = random.Random(schedule)
        yielding = [p.service.store for p in sweepers if isinstance(p.service.store, YieldingStore)]

        async def all_at_once() -> list[Any]:
            for store in yielding:
                store.schedule = interleaving
            try:
                return list(
                    await asyncio.gather(
                        *(reclaim.sweep(p.service, rng=random.Random(0)) for p in sweepers)
                    )
                )
            finally:
                for store in yielding:
                    store.schedule = None

        reports = self.run(all_at_once())
        winners: dict[str, Process] = {}
        for process, report in zip(sweepers, reports, strict=True):
            for record in report.taken:
                require(
                    record.id not in winners,
                    "R7",
                    f"{record.id} was taken by both {winners.get(record.id)} and {process.label}"
                    " in one round: concurrent reclaimers must see exactly one winner",
                )
                winners[record.id] = process
                process.view[record.id] = record
        self.apply_takeovers(
            {cid: p.owner for cid, p in winners.items()}, expected, before, complete=True
        )

    def apply_takeovers(
        self,
        taken: dict[str, ModelOwner],
        expected: dict[str, set[ModelOwner]],
        before: dict[str, ModelRecord],
        *,
        complete: bool,
    ) -> None:
        """Record the takeovers as events and apply the allowed ones to the model."""
        for connection_id, new_owner in sorted(taken.items()):
            previous = before[connection_id].owner if connection_id in before else None
            allowed = frozenset(expected.get(connection_id, set()))
            self.takeovers.append(
                Takeover(
                    connection_id,
                    previous,
                    new_owner,
                    allowed,
                    previous is not None and self.model.alive(previous),
                )
            )
            if new_owner in allowed:
                self.model.take(connection_id, new_owner)
        if complete:
            for connection_id, allowed_winners in sorted(expected.items()):
                if connection_id not in taken:
                    self.missed.append((connection_id, set(allowed_winners)))

    @precondition(lambda self: self.has("running"))
    @rule(data=st.data())
    @step
    def sweep_alone(self, data: st.DataObject) -> None:
        """R7: one holder's periodic reclaim sweep."""
        self.sweep_by([self.draw_process(data, "running")])

    @precondition(lambda self: len(self.processes_in("running")) >= 2)
    @rule(data=st.data(), schedule=st.integers(min_value=0, max_value=2**16))
    @step
    def sweep_concurrently(self, data: st.DataObject, schedule: int) -> None:
        """R7: several holders sweep at the same moment (real asyncio tasks, real store)."""
        labels = sorted(p.label for p in self.processes_in("running"))
        chosen = data.draw(
            st.lists(st.sampled_from(labels), min_size=2, max_size=len(labels), unique=True),
            label="sweepers",
        )
        self.sweep_by([p for p in self.processes if p.label in chosen], schedule)

    @precondition(lambda self: self.has("running"))
    @rule(data=st.data(), answered=st.integers(min_value=0, max_value=12))
    @step
    def sweep_while_store_fails(self, data: st.DataObject, answered: int) -> None:
        """R5: the store stops answering after ``answered`` operations of a sweep. A failing
        store is never evidence of death: whatever was taken must have been reclaimable."""
        process = self.draw_process(data, "running")
        expected = self.model.sweep_expectation({process.owner})
        before = dict(self.model.records)
        failing = OwnershipService(
            FailingStore(process.service.store, answered),
            me=process.service.me,
            policy=process.service.policy,
            clock=self.clock,
            record_ttl=RECORD_TTL,
        )
        try:
            report = self.run(reclaim.sweep(failing, rng=random.Random(0)))
        except StoreUnavailable:
            # The holder gets no report: records it took meanwhile it learns about when it
            # re-confirms (and adopts them then).
            after = self.snapshot_now(sorted(before))
            taken = {
                cid: process.owner
                for cid, record in after.items()
                if self.model_owner(record.owner) != before[cid].owner
            }
            self.apply_takeovers(taken, expected, before, complete=False)
            return
        for record in report.taken:
            process.view[record.id] = record
        self.apply_takeovers(
            {r.id: process.owner for r in report.taken}, expected, before, complete=True
        )

    @precondition(lambda self: self.has("running") and bool(self.ever_created))
    @rule(
        data=st.data(),
        command=st.sampled_from(["tags.set", "disconnect"]),
        value=st.sampled_from(["1", "2"]),
    )
    @step
    def command(self, data: st.DataObject, command: str, value: str) -> None:
        """R3: a command for a connection arrives at any holder. The owner runs it; a
        non-owner is refused locally, forwards to a live owner, answers UNAVAILABLE when the
        owner is alive but unreachable, and reclaims first when the owner is dead (R5, R7)."""
        via = self.draw_process(data, "running", label="receiver")
        connection_id = data.draw(st.sampled_from(sorted(self.ever_created)), label="connection")
        stored = self.run(via.service.get(connection_id))
        if stored is None:  # NOT_FOUND: it must really be gone
            require(
                connection_id not in self.model.records,
                "R2",
                f"{connection_id} is in the model but not in the store",
            )
            return
        owner = stored.record.owner
        if owner == via.service.me:
            self.run_on_owner(via, connection_id, command, value, stored.record.fencing_token)
            return
        # R3: a non-owner never runs the command itself.
        try:
            self.run(via.service.update(connection_id, lambda r: r))
        except NotOwner as exc:
            require(
                exc.owner == (owner.instance_id if owner else None),
                "R3",
                f"refusal names {exc.owner!r}, the owner is {owner}",
            )
        else:
            raise RuleViolation(f"R3: non-owner {via.label} changed {connection_id}")
        # R4: discovery agrees with the heartbeats.
        peers = self.run(via.service.live_peers())
        require(
            set(peers) == self.model.live_instances(),
            "R4",
            f"live peers {sorted(peers)}, the model says {sorted(self.model.live_instances())}",
        )
        owner_alive = owner is not None and (
            owner.instance_id in peers and peers[owner.instance_id].owner == owner
        )
        if owner_alive:
            target = self.process_of(self.model_owner(owner))
            if target is None or target.state != "running":
                return  # alive but unreachable: UNAVAILABLE, retryable; nothing changes
            token = stored.record.fencing_token
            if token > 1:  # R3: a stale fencing token is refused, naming the current owner
                try:
                    self.run(target.service.update(connection_id, lambda r: r, token=token - 1))
                except NotOwner as exc:
                    require(
                        exc.owner == target.owner.instance_id and exc.fencing_token == token,
                        "R3",
                        f"stale-token refusal names {exc.owner}/{exc.fencing_token}",
                    )
                except SelfFenced:
                    pass
                else:
                    raise RuleViolation(f"R3: stale token {token - 1} accepted on {connection_id}")
            self.run_on_owner(target, connection_id, command, value, token)
            return
        # The owner is dead or there is none: reclaim this record (R6, R7), then act.
        before = dict(self.model.records)
        reclaimable = self.model.reclaimable(before[connection_id])
        claim = self.run(reclaim.reclaim_one(via.service, connection_id))
        taken = claim.outcome is reclaim.ClaimOutcome.TAKEN
        self.apply_takeovers(
            {connection_id: via.owner} if taken else {},
            {connection_id: {via.owner}} if reclaimable else {},
            before,
            complete=True,
        )
        if taken and claim.record is not None:
            via.view[connection_id] = claim.record
            self.run_on_owner(via, connection_id, command, value, claim.record.fencing_token)
        # else: not reclaimable yet: UNAVAILABLE, retryable

    def run_on_owner(
        self, process: Process, connection_id: str, command: str, value: str, token: int
    ) -> None:
        """The owner runs a command (R3); refused only while it is self-fenced (R8)."""
        try:
            if command == "disconnect":
                self.run(process.service.delete(connection_id, token=token))
            else:
                stored = self.run(
                    process.service.update(
                        connection_id,
                        lambda r: r.with_changes(tags={**r.tags, "k": value}),
                        token=token,
                    )
                )
        except SelfFenced:
            return  # it must re-confirm first; the caller retries
        except NotOwner as exc:
            require(
                not self.model.may_act(process.owner, connection_id, token),
                "R3",
                f"the owner {process.label} (token {token}) was refused {command}: {exc}",
            )
            return
        require(
            self.model.may_act(process.owner, connection_id, token),
            "R3",
            f"{process.label} ran {command} on {connection_id} with token {token}, but the "
            f"record is {self.model.records.get(connection_id)}",
        )
        if command == "disconnect":
            self.model.disconnect(connection_id)
            process.view.pop(connection_id, None)
        else:
            self.model.set_tag(connection_id, "k", value)
            process.view[connection_id] = stored.record

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def r2_r8_at_most_one_instance_may_act(self) -> None:
        """R2 + R3 + R8: for every connection, at most one running process would be allowed
        to send or publish right now, and that one is the owner the stored record names, with
        the stored fencing token. (R10: a process may keep acting on a record that a
        CLEAR_ALL_ON_START deleted under it, as long as it was the last owner.)"""
        snapshot = self.snapshot()
        may_act: dict[str, list[tuple[Process, int]]] = {}
        for process in self.processes_in("running"):
            for connection_id, record in process.view.items():
                try:
                    process.service.check_may_act(record, record.fencing_token)
                except (NotOwner, SelfFenced):
                    continue
                may_act.setdefault(connection_id, []).append((process, record.fencing_token))
        for connection_id, actors in sorted(may_act.items()):
            require(
                len(actors) <= 1,
                "R2",
                f"{connection_id}: {[p.label for p, _ in actors]} may all act at once",
            )
            process, token = actors[0]
            stored = snapshot.records.get(connection_id)
            if stored is None and connection_id in self.cleared:
                require(
                    self.cleared[connection_id] == process.owner,
                    "R8",
                    f"{process.label} may act on cleared {connection_id}, not its last owner",
                )
                continue
            require(
                stored is not None
                and stored.owner == process.service.me
                and stored.fencing_token == token,
                "R8",
                f"{process.label} may act on {connection_id} with token {token}, but the "
                f"store says {stored.owner if stored else 'deleted'} / "
                f"{stored.fencing_token if stored else '-'}: a deposed owner must be fenced",
            )

    @invariant()
    def r2_fencing_tokens_never_decrease(self) -> None:
        """R2: a record's fencing token never goes down, and every change of owner raises it."""
        for connection_id, record in sorted(self.snapshot().records.items()):
            seen = self.last_seen.get(connection_id)
            if seen is not None:
                owner, token = seen
                require(
                    record.fencing_token >= token,
                    "R2",
                    f"{connection_id}: token went from {token} to {record.fencing_token}",
                )
                require(
                    record.owner == owner or record.fencing_token > token,
                    "R2",
                    f"{connection_id}: owner changed {owner} -> {record.owner} but the token "
                    f"stayed {token}",
                )
            self.last_seen[connection_id] = (record.owner, record.fencing_token)

    @invariant()
    def r2_no_record_lost_or_duplicated(self) -> None:
        """R2/R10/R11 (and §8 "nothing is lost"): every connection the model holds is stored
        exactly once; the global index lists exactly the stored records; each record is in
        exactly one per-owner index (its owner's, at its incarnation; the ownerless index after
        a drain) and no index lists a record that does not exist."""
        snapshot = self.snapshot()
        stored = set(snapshot.records)
        require(
            stored == set(self.model.records),
            "R2",
            f"stored records {sorted(stored)} != expected {sorted(self.model.records)}",
        )
        require(
            len(snapshot.global_index) == len(set(snapshot.global_index)),
            "R2",
            f"global index has duplicates: {snapshot.global_index}",
        )
        require(
            set(snapshot.global_index) == stored,
            "R2",
            f"global index {sorted(snapshot.global_index)} != records {sorted(stored)}",
        )
        listed: dict[str, list[str]] = {}
        for instance_id, index in snapshot.owner_indexes.items():
            for connection_id in index:
                listed.setdefault(connection_id, []).append(instance_id)
        for connection_id, record in snapshot.records.items():
            where = record.owner.instance_id if record.owner else keys.UNOWNED
            incarnation = record.owner.incarnation if record.owner else ""
            require(
                listed.get(connection_id) == [where]
                and snapshot.owner_indexes[where][connection_id] == incarnation,
                "R2",
                f"{connection_id} (owner {record.owner}) is listed in {listed.get(connection_id)}",
            )
        dangling = sorted(set(listed) - stored)
        require(not dangling, "R2", f"indexes list records that do not exist: {dangling}")

    @invariant()
    def r6_live_owner_never_taken(self) -> None:
        """R6 (+R5, R1): a sweep takes only reclaimable records: ownerless ones (R11), or ones
        whose owner incarnation is not alive and that were not renewed for the stale TTL. A
        connection whose owner is alive is never taken."""
        for event in self.takeovers:
            require(
                not event.previous_owner_alive,
                "R6",
                f"{event.connection_id} was taken by {event.new_owner} from its live owner "
                f"{event.previous_owner}",
            )
            require(
                event.new_owner in event.allowed_winners,
                "R6",
                f"{event.connection_id} was taken by {event.new_owner} from "
                f"{event.previous_owner} but was not reclaimable by it (allowed: "
                f"{sorted(map(str, event.allowed_winners))})",
            )

    @invariant()
    def r7_orphans_taken_by_first_sweep(self) -> None:
        """R7: a sweep by a live holder takes every record that is reclaimable by it, each by
        exactly one of several concurrent sweepers. As holders sweep every
        RECLAIM_INTERVAL_SECONDS, every orphan is re-owned at most stale threshold (or TTL) +
        reclaim interval after its owner's last renewal."""
        require(
            not self.missed,
            "R7",
            "reclaimable records left behind by a sweep: "
            + ", ".join(f"{cid} (for {sorted(map(str, w))})" for cid, w in self.missed),
        )

    @invariant()
    def r8_deposed_owner_is_refused(self) -> None:
        """R8 (+R3): every send or publish that was allowed this step came from the current
        owner with the current fencing token. A process that wakes after its connections were
        taken over does not get to send or publish even once."""
        snapshot = self.snapshot()
        for act in self.acts:
            stored = snapshot.records.get(act.connection_id)
            if stored is None and self.cleared.get(act.connection_id) == act.owner:
                continue  # R10 deleted it under its owner; nobody else owns it
            require(
                self.model.may_act(act.owner, act.connection_id, act.token),
                "R8",
                f"{act.process} was allowed to {act.kind} on {act.connection_id} with token "
                f"{act.token}, but the record is {self.model.records.get(act.connection_id)}",
            )

    @invariant()
    def reference_model_agrees(self) -> None:
        """Every stored record and heartbeat equals the reference model's (spec/model.py)."""
        snapshot = self.snapshot()
        for connection_id, expected in sorted(self.model.records.items()):
            record = snapshot.records[connection_id]
            actual = ModelRecord(
                id=record.id,
                url=record.url,
                topic=record.topic,
                tags=dict(record.tags),
                auto_reconnect=record.auto_reconnect,
                owner=self.model_owner(record.owner),
                token=record.fencing_token,
                status=str(record.status),
                renewed_at=record.renewed_at,
            )
            require(actual == expected, "model", f"store has {actual}, model has {expected}")
        beats = {
            i: (self.incarnations[inc], seen) for i, (inc, seen) in snapshot.heartbeats.items()
        }
        expected_beats = {i: (b.incarnation, b.last_seen) for i, b in self.model.beats.items()}
        require(
            beats == expected_beats,
            "model",
            f"stored heartbeats {beats} != model {expected_beats}",
        )
