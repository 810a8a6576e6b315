"""The spec has teeth: planted bugs make it fail.

Each test plants one bug in the implementation by monkeypatching it, runs the ownership state
machine on the memory store with a small, fixed (derandomized) budget, and expects a
:class:`~spec.machine.RuleViolation`. The unmutated implementation must pass the very same
budget, so a mutant is caught by the spec and not by chance.

Planted bugs:

* ``blind_reclaim_write``: the takeover writes the record without its ETag (last write wins,
  against R2/R7);
* ``reclaim_live_owner``: the sweep ignores heartbeats and takes records of live owners (R6);
* ``token_not_increased``: a takeover keeps the old fencing token (R2);
* ``deposed_owner_publishes``: ``check_may_act`` forgets self-fencing, so an owner whose
  connections were taken over while it was paused still sends and publishes (R8);
* ``superseded_owner_not_fenced``: the owner fences on heartbeat age only, so a frozen pod
  replaced under its HOSTNAME wakes unfenced (R1 + R8; a bug the spec found, see
  ``test_found_violations.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from spec.machine import OwnershipSpec, RuleViolation
from spec.stores import SpecBackend
from wsmanager import reclaim
from wsmanager.core import keys
from wsmanager.core.errors import NotOwner
from wsmanager.core.model import ConnectionRecord, Heartbeat, Owner
from wsmanager.core.ownership import LivenessPolicy, is_fenced, takeover
from wsmanager.ownership import OwnershipService
from wsmanager.ports import Expect, Upsert

#: Small and deterministic: the same examples on every run, no shrinking (we only need "fails").
BUDGET = settings(
    max_examples=400,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    print_blob=False,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run_machine() -> None:
    backend = SpecBackend.memory()
    run_state_machine_as_test(lambda: OwnershipSpec(backend), settings=BUDGET)  # type: ignore[arg-type]


# -- the planted bugs ---------------------------------------------------------------------------


def blind_reclaim_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """R2/R7 broken: the reclaimer's record write ignores the ETag it read."""

    def blind_upsert(
        key: str, value: bytes, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Upsert:
        if key.startswith(keys.connection_key("")):
            expect = None
        return Upsert(key, value, expect=expect, ttl_seconds=ttl_seconds)

    monkeypatch.setattr(reclaim, "Upsert", blind_upsert)


def reclaim_live_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    """R6 broken: record age alone decides, even when the owner's heartbeat is fresh."""

    def by_age_only(
        record: ConnectionRecord, heartbeat: Heartbeat | None, now: float, policy: LivenessPolicy
    ) -> bool:
        return record.owner is None or now - record.renewed_at > policy.stale_connection_ttl

    monkeypatch.setattr(reclaim, "is_reclaimable", by_age_only)
    monkeypatch.setattr(reclaim, "dead_owners", lambda ids, *_: set(ids))


def token_not_increased(monkeypatch: pytest.MonkeyPatch) -> None:
    """R2 broken: a change of owner keeps the fencing token."""

    def same_token(record: ConnectionRecord, new_owner: Owner, now: float) -> ConnectionRecord:
        return takeover(record, new_owner, now).with_changes(fencing_token=record.fencing_token)

    monkeypatch.setattr(reclaim, "takeover", same_token)


def deposed_owner_publishes(monkeypatch: pytest.MonkeyPatch) -> None:
    """R8 broken: an owner acts on its local view without checking its renew deadline."""

    def no_fencing(self: OwnershipService, record: ConnectionRecord, token: Any = None) -> None:
        if record.owner != self.me:
            owner = record.owner.instance_id if record.owner else None
            raise NotOwner(record.id, owner, record.fencing_token)
        if token is not None and token != record.fencing_token:
            raise NotOwner(record.id, self.me.instance_id, record.fencing_token)
        # (the real one also raises SelfFenced here when self.fenced())

    monkeypatch.setattr(OwnershipService, "check_may_act", no_fencing)


def superseded_owner_not_fenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """R1 + R8 broken (a bug the spec found): with heartbeats on, an owner fences only on its
    heartbeat age, so a frozen pod whose HOSTNAME was reused wakes unfenced after its
    successor took its connections."""

    def heartbeat_age_only(self: OwnershipService, now: float) -> bool:
        return is_fenced(self.last_renewal_at, now, self.policy)

    monkeypatch.setattr(OwnershipService, "_lease_lapsed", heartbeat_age_only)


MUTANTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "blind_reclaim_write": blind_reclaim_write,
    "reclaim_live_owner": reclaim_live_owner,
    "token_not_increased": token_not_increased,
    "deposed_owner_publishes": deposed_owner_publishes,
    "superseded_owner_not_fenced": superseded_owner_not_fenced,
}


# -- the tests ----------------------------------------------------------------------------------


def test_the_unmutated_implementation_passes_the_same_budget() -> None:
    run_machine()


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_spec_catches_the_planted_bug(mutant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    MUTANTS[mutant](monkeypatch)
    with pytest.raises(RuleViolation) as caught:
        run_machine()
    print(f"{mutant}: caught by {str(caught.value).splitlines()[0]}")
