"""The error tree and its single mapping to HTTP status and gRPC code."""

from __future__ import annotations

import pytest

from wsmanager.core import errors as e


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (e.InvalidArgument("x"), 400, 3),
        (e.ConfigError("HttpPort", "bad"), 400, 3),
        (e.InvalidEvent("x"), 400, 3),
        (e.NotFound("x"), 404, 5),
        (e.AlreadyExists("x"), 409, 6),
        (e.NotOwner("c", "pod-a", 3), 412, 9),
        (e.NotConnected("c"), 409, 9),
        (e.SelfFenced("x"), 409, 9),
        (e.ConcurrencyConflict("x"), 409, 10),
        (e.ResourceExhausted("x"), 429, 8),
        (e.DeadlineExceeded("x"), 504, 4),
        (e.StoreUnavailable("x"), 503, 14),
        (e.OwnerUnreachable("x"), 503, 14),
        (e.Internal("x"), 500, 13),
        (RuntimeError("boom"), 500, 13),
    ],
)
def test_one_mapping_to_http_and_grpc(error: BaseException, status: int, code: int) -> None:
    assert e.http_status(error) == status
    assert e.grpc_code(error) == code


def test_root_is_abstract() -> None:
    with pytest.raises(TypeError):
        e.WsmError("x")


def test_error_body_shape_and_no_internal_leak() -> None:
    assert e.error_body(e.NotFound("Connection not found")) == {
        "error": {"code": "NOT_FOUND", "message": "Connection not found"}
    }
    body = e.error_body(RuntimeError("secret password=hunter2"))
    assert "hunter2" not in str(body) and body["error"]["code"] == "INTERNAL"


def test_not_owner_names_the_current_owner() -> None:
    body = e.error_body(e.NotOwner("c1", "pod-b", 7))
    assert body["error"]["details"] == {"connection_id": "c1", "owner": "pod-b", "fencing_token": 7}


def test_config_error_names_the_key() -> None:
    assert str(e.ConfigError("HttpPort", "must be 1..65535")).startswith("HttpPort:")


@pytest.mark.parametrize(
    "cls", [e.NotFound, e.Unavailable, e.DeadlineExceeded, e.FailedPrecondition]
)
def test_peer_error_bodies_round_trip(cls: type[e.WsmError]) -> None:
    original = cls("msg")
    rebuilt = e.from_error_body(e.error_body(original), original.http_status)
    assert type(rebuilt) is cls and rebuilt.message == "msg"


def test_retryable_errors_are_5xx_or_429() -> None:
    for cls in (e.StoreUnavailable, e.OwnerUnreachable, e.DeadlineExceeded, e.ResourceExhausted):
        assert cls.retryable and (cls.http_status >= 500 or cls.http_status == 429)
    assert not e.InvalidArgument.retryable and not e.NotFound.retryable


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (e.MethodNotAllowed, 405, 12),
        (e.Unauthenticated, 401, 16),
        (e.PermissionDenied, 403, 7),
    ],
)
def test_edge_errors_belong_to_the_one_tree(cls: type[e.WsmError], status: int, code: int) -> None:
    error = cls("x")
    assert (e.http_status(error), e.grpc_code(error)) == (status, code)
    assert e.error_body(error)["error"]["code"] in e.GRPC_CODES
