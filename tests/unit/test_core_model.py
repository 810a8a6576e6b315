"""The connection/heartbeat model: JSON round trips, strict parsing, transitions as data."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsmanager.core.errors import IllegalTransition, InvalidArgument
from wsmanager.core.model import (
    ALLOWED_TRANSITIONS,
    ConnectionRecord,
    ConnectionStatus,
    Heartbeat,
    Owner,
    check_transition,
    new_incarnation,
)

text = st.text(min_size=1, max_size=20)
records = st.builds(
    ConnectionRecord,
    id=text,
    url=text,
    status=st.sampled_from(ConnectionStatus),
    owner=st.none() | st.builds(Owner, text, text),
    fencing_token=st.integers(0, 2**40),
    created_at=st.floats(0, 2e9),
    updated_at=st.floats(0, 2e9),
    renewed_at=st.floats(0, 2e9),
    topic=st.none() | text,
    tags=st.dictionaries(text, st.text(max_size=30), max_size=5),
    auto_reconnect=st.booleans(),
    content_type=st.sampled_from(["text/plain", "application/json"]),
)


@given(records)
def test_record_json_round_trip(record: ConnectionRecord) -> None:
    assert ConnectionRecord.from_json(record.to_json()) == record


def test_record_tags_are_frozen() -> None:
    r = ConnectionRecord(
        "c", "wss://h", ConnectionStatus.CONNECTED, None, 0, 0, 0, 0, tags={"a": "b"}
    )
    with pytest.raises(TypeError):
        r.tags["a"] = "c"  # type: ignore[index]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"id": "c"}',
        b'{"id":"c","url":"u","status":"NOPE","fencing_token":1,"auto_reconnect":false,'
        b'"created_at":0,"updated_at":0,"renewed_at":0}',
        b'{"id":"c","url":"u","status":"CONNECTED","fencing_token":true,"auto_reconnect":false,'
        b'"created_at":0,"updated_at":0,"renewed_at":0}',
    ],
)
def test_bad_records_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        ConnectionRecord.from_json(raw)


def test_heartbeat_round_trip() -> None:
    hb = Heartbeat("pod-a", "inc", 12.5, "http://10.0.0.1:5001", 7)
    assert Heartbeat.from_json(hb.to_json()) == hb
    assert hb.owner == Owner("pod-a", "inc")


def test_transitions_table_covers_every_status() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(ConnectionStatus)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (ConnectionStatus.DISCONNECTED, ConnectionStatus.CONNECTING),
        (ConnectionStatus.CONNECTING, ConnectionStatus.CONNECTED),
        (ConnectionStatus.CONNECTED, ConnectionStatus.RECONNECTING),
        (ConnectionStatus.RECONNECTING, ConnectionStatus.CONNECTED),
        (ConnectionStatus.RECONNECTING, ConnectionStatus.DISCONNECTED),
    ],
)
def test_documented_transitions_are_allowed(
    current: ConnectionStatus, new: ConnectionStatus
) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (ConnectionStatus.DISCONNECTED, ConnectionStatus.CONNECTED),
        (ConnectionStatus.DISCONNECTED, ConnectionStatus.RECONNECTING),
        (ConnectionStatus.CONNECTED, ConnectionStatus.CONNECTED),
    ],
)
def test_other_transitions_are_illegal(current: ConnectionStatus, new: ConnectionStatus) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current, new)


def test_r1_incarnations_sort_by_start_time() -> None:
    assert new_incarnation(100.0, "zz") < new_incarnation(100.5, "aa")
    with pytest.raises(InvalidArgument):
        new_incarnation(1.0, "")


def test_owner_needs_both_parts() -> None:
    with pytest.raises(InvalidArgument):
        Owner("", "x")
