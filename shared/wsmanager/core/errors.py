"""The one error tree of wsmanager, and its one mapping to HTTP status and gRPC code.

Every failure that crosses a module boundary is one of these. The shells (holder REST API,
functions, CLI) map them to the wire with :func:`http_status` / :func:`grpc_code` and render
them with :func:`error_body`; nothing else decides a status code.

::

    WsmError                              (abstract root; code, http_status, retryable)
    ├── InvalidArgument(ValueError)       INVALID_ARGUMENT     400  bad input, nothing changed
    │   ├── MethodNotAllowed              UNIMPLEMENTED        405  path exists, method does not
    │   ├── ConfigError                   INVALID_ARGUMENT     400  bad setting, names the key
    │   └── InvalidEvent                  INVALID_ARGUMENT     400  malformed CloudEvent / command
    ├── Unauthenticated                   UNAUTHENTICATED      401  no or wrong internal token
    ├── PermissionDenied                  PERMISSION_DENIED    403  CORS origin not allowed
    ├── NotFound(LookupError)             NOT_FOUND            404
    ├── AlreadyExists                     ALREADY_EXISTS       409
    ├── FailedPrecondition                FAILED_PRECONDITION  409
    │   ├── NotOwner                      FAILED_PRECONDITION  412  stale token / wrong owner (R3)
    │   ├── NotConnected                  FAILED_PRECONDITION  409  socket is not open
    │   ├── IllegalTransition             FAILED_PRECONDITION  409  status change not in the table
    │   └── SelfFenced                    FAILED_PRECONDITION  409  renew deadline lapsed (R8)
    ├── ConcurrencyConflict               ABORTED              409  ETag mismatch (R2), re-read
    ├── ResourceExhausted                 RESOURCE_EXHAUSTED   429  send queue full (backpressure)
    ├── DeadlineExceeded(TimeoutError)    DEADLINE_EXCEEDED    504  no correlated reply in time
    ├── Unavailable                       UNAVAILABLE          503  retryable
    │   ├── StoreUnavailable              UNAVAILABLE          503  state store failing (R5)
    │   └── OwnerUnreachable              UNAVAILABLE          503  owner alive, not answering (R3)
    └── Internal                          INTERNAL             500  a bug; never caused by input

Retryable errors (``retryable = True``) become 5xx/429 so Knative or Dapr redelivers; everything
else is a poison input or a decision and is answered 4xx.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AlreadyExists",
    "ConcurrencyConflict",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "IllegalTransition",
    "Internal",
    "InvalidArgument",
    "InvalidEvent",
    "MethodNotAllowed",
    "NotConnected",
    "NotFound",
    "NotOwner",
    "OwnerUnreachable",
    "PermissionDenied",
    "ResourceExhausted",
    "SelfFenced",
    "StoreUnavailable",
    "Unauthenticated",
    "Unavailable",
    "WsmError",
    "GRPC_CODES",
    "error_body",
    "from_error_body",
    "grpc_code",
    "http_status",
]

#: gRPC status codes by name (google.rpc.Code), so the core needs no grpc import.
GRPC_CODES: dict[str, int] = {
    "OK": 0,
    "UNIMPLEMENTED": 12,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "UNAVAILABLE": 14,
    "INTERNAL": 13,
    "UNAUTHENTICATED": 16,
}


class WsmError(Exception):
    """Root of every wsmanager error. Abstract: raise a subclass."""

    code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        if type(self) is WsmError:
            raise TypeError("WsmError is abstract; raise one of its subclasses")
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(WsmError, ValueError):
    code = "INVALID_ARGUMENT"
    http_status = 400


class ConfigError(InvalidArgument):
    """A setting has a bad value; the message names the key. Stops start-up."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}", key=key)
        self.key = key


class InvalidEvent(InvalidArgument):
    """A CloudEvent or command body that can never succeed (poison: do not redeliver)."""


class MethodNotAllowed(InvalidArgument):
    """The path exists, the method does not (gRPC transcoding says UNIMPLEMENTED)."""

    code = "UNIMPLEMENTED"
    http_status = 405


class Unauthenticated(WsmError):
    code = "UNAUTHENTICATED"
    http_status = 401


class PermissionDenied(WsmError):
    code = "PERMISSION_DENIED"
    http_status = 403


class NotFound(WsmError, LookupError):
    code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(WsmError):
    code = "ALREADY_EXISTS"
    http_status = 409


class FailedPrecondition(WsmError):
    code = "FAILED_PRECONDITION"
    http_status = 409


class NotOwner(FailedPrecondition):
    """R3: the caller addressed a holder that does not own the connection at this token."""

    http_status = 412

    def __init__(
        self, connection_id: str, owner: str | None, fencing_token: int, message: str = ""
    ) -> None:
        super().__init__(
            message or f"Connection owned by different instance: {connection_id}",
            connection_id=connection_id,
            owner=owner,
            fencing_token=fencing_token,
        )
        self.connection_id = connection_id
        self.owner = owner
        self.fencing_token = fencing_token


class NotConnected(FailedPrecondition):
    def __init__(self, connection_id: str, message: str = "WebSocket is not connected") -> None:
        super().__init__(message, connection_id=connection_id)


class IllegalTransition(FailedPrecondition):
    pass


class SelfFenced(FailedPrecondition):
    """R8: this owner missed its renew deadline and must re-confirm before acting."""


class ConcurrencyConflict(WsmError):
    """R2: an ETag did not match (or a first write found the key present)."""

    code = "ABORTED"
    http_status = 409
    retryable = True


class ResourceExhausted(WsmError):
    code = "RESOURCE_EXHAUSTED"
    http_status = 429
    retryable = True


class DeadlineExceeded(WsmError, TimeoutError):
    code = "DEADLINE_EXCEEDED"
    http_status = 504
    retryable = True


class Unavailable(WsmError):
    code = "UNAVAILABLE"
    http_status = 503
    retryable = True


class StoreUnavailable(Unavailable):
    """R5: the state store is failing. Never evidence that peers are dead."""


class OwnerUnreachable(Unavailable):
    """R3: the owner is alive (fresh heartbeat) but did not answer."""


class Internal(WsmError):
    code = "INTERNAL"
    http_status = 500


_BY_CODE: dict[str, type[WsmError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "FAILED_PRECONDITION": FailedPrecondition,
    "ABORTED": ConcurrencyConflict,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "UNAVAILABLE": Unavailable,
    "INTERNAL": Internal,
}


def http_status(error: BaseException) -> int:
    """HTTP status for any exception: ours by class, anything else is a 500."""
    return error.http_status if isinstance(error, WsmError) else 500


def grpc_code(error: BaseException) -> int:
    """Numeric gRPC status code for any exception."""
    name = error.code if isinstance(error, WsmError) else "INTERNAL"
    return GRPC_CODES[name]


def error_body(error: BaseException) -> dict[str, Any]:
    """The JSON error body of the brief: ``{"error": {"code": ..., "message": ...}}``.

    Unknown exceptions are rendered without their text: internals never leak to callers.
    """
    if isinstance(error, WsmError):
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.details:
            body["details"] = {k: v for k, v in error.details.items() if v is not None}
        return {"error": body}
    return {"error": {"code": "INTERNAL", "message": "internal error"}}


def from_error_body(body: Any, status: int) -> WsmError:
    """Rebuild an error from a peer's error body (used when a forwarded call fails)."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    cls = _BY_CODE.get(code or "", Internal if status >= 500 else InvalidArgument)
    return cls(str(message or f"peer answered HTTP {status}"))
