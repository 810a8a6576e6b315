"""Unit tests of the ownership rules in ``wsmanager.core.ownership``; each cites its rule."""

from __future__ import annotations

import pytest

from wsmanager.core.errors import InvalidArgument, NotOwner, SelfFenced
from wsmanager.core.model import ConnectionRecord, ConnectionStatus, Heartbeat, Owner
from wsmanager.core.ownership import (
    Act,
    Forward,
    Liveness,
    LivenessPolicy,
    authorize,
    check_token,
    dead_owners,
    fence_deadline,
    is_fenced,
    is_reclaimable,
    liveness,
    release,
    renew,
    takeover,
)

T0 = 1_000_000.0
A = Owner("pod-a", "inc-1")
A2 = Owner("pod-a", "inc-2")
B = Owner("pod-b", "inc-1")
POLICY = LivenessPolicy(heartbeat_interval=10, stale_threshold=60, stale_connection_ttl=60)
NO_HEARTBEATS = LivenessPolicy(heartbeat_interval=0, stale_threshold=60, stale_connection_ttl=60)


def record(
    owner: Owner | None = A, *, renewed_at: float = T0, auto: bool = True, token: int = 3
) -> ConnectionRecord:
    return ConnectionRecord(
        id="c1",
        url="wss://example.com/feed",
        status=ConnectionStatus.CONNECTED,
        owner=owner,
        fencing_token=token,
        created_at=T0 - 100,
        updated_at=T0,
        renewed_at=renewed_at,
        topic="prices",
        tags={"venue": "x"},
        auto_reconnect=auto,
    )


def beat(owner: Owner, at: float) -> Heartbeat:
    return Heartbeat(owner.instance_id, owner.incarnation, at, "http://10.0.0.1:5001", 1)


class TestLiveness:
    def test_r4_fresh_heartbeat_is_alive(self) -> None:
        assert liveness(A, beat(A, T0), T0 + 10, POLICY) is Liveness.ALIVE

    def test_r4_exactly_at_the_stale_threshold_is_still_alive(self) -> None:
        assert liveness(A, beat(A, T0), T0 + 60, POLICY) is Liveness.ALIVE

    def test_r4_older_than_the_threshold_is_dead(self) -> None:
        assert liveness(A, beat(A, T0), T0 + 60.001, POLICY) is Liveness.DEAD

    def test_r4_missing_heartbeat_is_dead(self) -> None:
        assert liveness(A, None, T0, POLICY) is Liveness.DEAD

    def test_r5_clock_going_backwards_is_never_evidence_of_death(self) -> None:
        assert liveness(A, beat(A, T0 + 500), T0, POLICY) is Liveness.ALIVE

    def test_r1_heartbeat_of_another_incarnation_does_not_keep_me_alive(self) -> None:
        assert liveness(A, beat(A2, T0), T0, POLICY) is Liveness.DEAD

    def test_r4_interval_zero_disables_heartbeats(self) -> None:
        assert liveness(A, beat(A, T0), T0, NO_HEARTBEATS) is Liveness.UNKNOWN

    def test_r4_dead_owners_lists_stale_and_missing(self) -> None:
        beats = {"pod-a": beat(A, T0), "pod-b": beat(B, T0 - 100)}
        assert dead_owners(["pod-a", "pod-b", "pod-c"], beats, T0, POLICY) == {"pod-b", "pod-c"}

    def test_r4_with_heartbeats_off_every_owner_is_a_candidate(self) -> None:
        assert dead_owners(["pod-a"], {"pod-a": beat(A, T0)}, T0, NO_HEARTBEATS) == {"pod-a"}


class TestReclaimEligibility:
    def test_r6_owner_alive_is_never_reclaimed_however_old_the_record(self) -> None:
        assert not is_reclaimable(record(renewed_at=T0 - 10_000), beat(A, T0), T0, POLICY)

    def test_r6_owner_dead_but_record_recently_renewed_is_not_yet_reclaimable(self) -> None:
        assert not is_reclaimable(record(renewed_at=T0 - 30), None, T0, POLICY)

    def test_r6_owner_dead_and_record_stale_is_reclaimable(self) -> None:
        assert is_reclaimable(record(renewed_at=T0 - 61), beat(A, T0 - 61), T0, POLICY)

    def test_r6_exactly_at_the_ttl_is_not_yet_reclaimable(self) -> None:
        assert not is_reclaimable(record(renewed_at=T0 - 60), None, T0, POLICY)

    def test_r6_with_heartbeats_off_record_age_alone_decides(self) -> None:
        fresh_beat = beat(A, T0)
        assert is_reclaimable(record(renewed_at=T0 - 61), fresh_beat, T0, NO_HEARTBEATS)
        assert not is_reclaimable(record(renewed_at=T0 - 59), fresh_beat, T0, NO_HEARTBEATS)

    def test_r11_record_with_no_owner_is_reclaimable_at_once(self) -> None:
        assert is_reclaimable(record(owner=None, renewed_at=T0), None, T0, POLICY)

    def test_r1_predecessor_incarnation_is_reclaimable_after_the_ttl(self) -> None:
        old = record(owner=A, renewed_at=T0 - 61)
        assert is_reclaimable(old, beat(A2, T0), T0, POLICY)

    def test_r5_clock_backwards_never_makes_a_record_stale(self) -> None:
        assert not is_reclaimable(record(renewed_at=T0 + 100), None, T0, POLICY)


class TestTakeover:
    def test_r7_keeps_identity_and_data_and_bumps_the_token(self) -> None:
        old = record(token=3)
        new = takeover(old, B, T0 + 1)
        assert new.owner == B and new.fencing_token == 4
        assert (new.id, new.url, new.topic, dict(new.tags), new.auto_reconnect) == (
            old.id,
            old.url,
            old.topic,
            dict(old.tags),
            old.auto_reconnect,
        )
        assert new.renewed_at == T0 + 1
        assert new.status is ConnectionStatus.CONNECTING

    def test_r7_without_auto_reconnect_the_record_is_marked_disconnected(self) -> None:
        assert takeover(record(auto=False), B, T0).status is ConnectionStatus.DISCONNECTED

    def test_r2_token_never_decreases_across_takeovers_and_releases(self) -> None:
        r = record(token=0)
        tokens = [r.fencing_token]
        for owner in (B, A, B):
            r = release(takeover(r, owner, T0), T0)
            tokens.append(r.fencing_token)
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)

    def test_r7_an_owner_cannot_take_over_itself(self) -> None:
        with pytest.raises(InvalidArgument):
            takeover(record(owner=A), A, T0)

    def test_r11_release_leaves_no_owner_and_bumps_the_token(self) -> None:
        released = release(record(token=5), T0)
        assert released.owner is None and released.fencing_token == 6

    def test_r6_renew_never_moves_backwards(self) -> None:
        assert renew(record(renewed_at=T0), T0 - 50).renewed_at == T0
        assert renew(record(renewed_at=T0), T0 + 5).renewed_at == T0 + 5


class TestSelfFencing:
    def test_r8_deadline_is_shorter_than_the_takeover_window(self) -> None:
        assert fence_deadline(T0, POLICY) < T0 + POLICY.stale_threshold

    def test_r8_with_heartbeats_off_it_is_shorter_than_the_stale_ttl(self) -> None:
        policy = LivenessPolicy(heartbeat_interval=0, stale_threshold=60, stale_connection_ttl=30)
        assert fence_deadline(T0, policy) < T0 + 30

    def test_r8_within_the_deadline_the_owner_may_act(self) -> None:
        assert not is_fenced(T0, T0 + 39, POLICY)

    def test_r8_past_the_deadline_the_owner_is_fenced(self) -> None:
        assert is_fenced(T0, T0 + 41, POLICY)

    def test_r8_never_renewed_means_fenced(self) -> None:
        assert is_fenced(None, T0, POLICY)

    def test_r8_explicit_deadline_must_be_shorter_than_the_window(self) -> None:
        with pytest.raises(InvalidArgument):
            LivenessPolicy(renew_deadline=60)
        assert LivenessPolicy(renew_deadline=5).effective_renew_deadline == 5


class TestAuthorize:
    def test_r3_owner_acts_with_its_token(self) -> None:
        verdict = authorize(record(), A, last_renewal_at=T0, now=T0 + 1, policy=POLICY)
        assert verdict == Act(3)

    def test_r3_non_owner_forwards_to_the_owner(self) -> None:
        verdict = authorize(record(), B, last_renewal_at=T0, now=T0, policy=POLICY)
        assert verdict == Forward(A, 3)

    def test_r3_ownerless_record_is_forwarded_to_nobody(self) -> None:
        verdict = authorize(record(owner=None), A, last_renewal_at=T0, now=T0, policy=POLICY)
        assert verdict == Forward(None, 3)

    def test_r1_predecessor_incarnation_is_not_me(self) -> None:
        verdict = authorize(record(owner=A), A2, last_renewal_at=T0, now=T0, policy=POLICY)
        assert isinstance(verdict, Forward)

    def test_r8_fenced_owner_may_not_act(self) -> None:
        with pytest.raises(SelfFenced):
            authorize(record(), A, last_renewal_at=T0, now=T0 + 41, policy=POLICY)

    def test_r3_stale_token_is_refused_naming_the_current_owner(self) -> None:
        with pytest.raises(NotOwner) as caught:
            check_token(record(token=4), 3)
        assert caught.value.owner == "pod-a" and caught.value.fencing_token == 4
        check_token(record(token=4), 4)
        check_token(record(token=4), None)


class TestPolicy:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"heartbeat_interval": -1},
            {"stale_threshold": 0},
            {"stale_connection_ttl": -5},
            {"heartbeat_interval": 60, "stale_threshold": 60},
        ],
    )
    def test_bad_policies_are_refused(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(InvalidArgument):
            LivenessPolicy(**kwargs)

    def test_r4_fractional_intervals_are_allowed(self) -> None:
        policy = LivenessPolicy(
            heartbeat_interval=0.05, stale_threshold=0.3, stale_connection_ttl=0.3
        )
        assert policy.effective_renew_deadline == pytest.approx(0.2)
