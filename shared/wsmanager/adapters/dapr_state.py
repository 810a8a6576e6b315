"""Dapr state store: the StateStore port over the SDK's ``dapr.aio`` gRPC client.

The port promises Dapr's *documented* semantics; Dapr's Redis state store (components-contrib
``state/redis``, the production backend) differs in places, and this adapter closes the gaps:

* ``SaveState`` returns no ETag, so ``save`` reads the key back. If the bytes there are ours,
  that ETag is ours; if another writer got in between, it returns :data:`SUPERSEDED`, an ETag
  no version carries, so the caller's next CAS conflicts just as it would have with the real one.
* First-write with no ETag overwrites a key written without first-write
  (dapr/components-contrib#1010), and every first-write save leaves a sticky flag after which
  ETag-less saves of that key fail. So ``ABSENT`` sends an ETag no version has
  (:data:`ABSENT_ETAG`, the workaround from dapr/dapr#2739): Redis writes it only if the key is
  absent and answers ABORTED otherwise. A CAS sends its ETag with unspecified concurrency,
  which Redis honours without setting the flag.
* An ETag for a key that does not exist is accepted (a save recreates it, a delete is a no-op).
  With ``check_missing`` (default) the adapter reads first and raises ConcurrencyConflict; that
  narrows the window to one round trip, it cannot close it.
* ``ExecuteStateTransaction`` reports every failure as INTERNAL, ETag mismatches included, and
  Redis MULTI/EXEC does not roll back operations before a failed one. ``transact`` therefore
  checks every expectation with one bulk read first; a mismatch the runtime still reports
  ("failed to set key", "failed to delete") is a ConcurrencyConflict, but operations before it
  may have been applied (a race only: the check passed a round trip earlier).
* A save without ``ttlInSeconds`` keeps the key's earlier TTL; ``ttl_seconds=None`` sends
  ``-1`` (PERSIST) so every save means what the port says.

Failures are retried and counted by :class:`~wsmanager.adapters.resilience.Resilience`.
A retried write whose first attempt did land may report a conflict with itself: callers re-read,
as after any conflict (R2).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Self, TypeVar

from wsmanager.adapters._keys import check_key, check_operations, check_prefix, check_ttl
from wsmanager.adapters.resilience import BreakerState, Resilience, guarded_call
from wsmanager.core.errors import (
    ConcurrencyConflict,
    Internal,
    InvalidArgument,
    StoreUnavailable,
    WsmError,
)
from wsmanager.ports import Absent, Delete, Etag, Expect, Operation, Upsert, Versioned

__all__ = [
    "ABSENT_ETAG",
    "SUPERSEDED",
    "DaprStateStore",
    "SidecarComponent",
    "open_dapr_client",
    "rpc_status",
]

T = TypeVar("T")

#: Never a Redis version (they count up from 1): a write carrying it succeeds only on a new key.
ABSENT_ETAG: Final = "2147483647"
#: Never a Redis version either: returned by ``save`` when its write was already overwritten.
SUPERSEDED: Final = Etag("-1")
#: Text of the runtime's errors when a Redis state script refused a conditional write.
_REFUSED = ("failed to set key", "failed to delete")


def rpc_status(exc: BaseException) -> tuple[str | None, str]:
    """The gRPC status name and message of an SDK error, or ``(None, str(exc))``.

    ``save_state`` raises ``DaprInternalError`` with the gRPC error only on ``__cause__``;
    most other methods raise ``DaprGrpcError`` (with ``.code()``); ``get_secret`` lets the raw
    ``AioRpcError`` through. All three are handled here.
    """
    for err in (exc, exc.__cause__):
        code = getattr(err, "code", None)
        if err is None or not callable(code):
            continue
        try:
            name = getattr(code(), "name", None)
            details = getattr(err, "details", None)
            text = details() if callable(details) else str(err)
        except Exception:  # a .code() that is not gRPC's: keep looking
            continue
        if isinstance(name, str):
            return name, str(text or "")
    return None, str(exc) or type(exc).__name__


async def open_dapr_client(address: str | None = None, *, health_timeout: float = 30.0) -> Any:
    """Build the SDK's aio ``DaprClient``: once, at start-up, never on a request path.

    ``DaprClient()`` blocks the thread (urllib + sleep) until the sidecar answers
    ``/v1.0/healthz/outbound``; waiting for that asynchronously first keeps the event loop free,
    and the constructor's own check then answers at once. The SDK is imported here, not at
    module import. ``address`` is the gRPC endpoint; the health URL comes from the SDK's
    settings (``DAPR_HTTP_ENDPOINT`` or ``DAPR_RUNTIME_HOST``:``DAPR_HTTP_PORT``).
    """
    from dapr.aio.clients import DaprClient
    from dapr.aio.clients.health import DaprHealth

    wait_for_sidecar: Callable[[], Awaitable[None]] = DaprHealth.wait_for_sidecar  # untyped
    try:
        await asyncio.wait_for(wait_for_sidecar(), health_timeout)
    except TimeoutError as exc:
        raise StoreUnavailable(f"Dapr sidecar not healthy after {health_timeout} s") from exc
    return DaprClient(address=address)


class SidecarComponent:
    """What every Dapr adapter shares: the SDK client (shared or built by :meth:`open`), its
    call timeout and the retry/circuit-breaker guard around every sidecar call."""

    def __init__(
        self,
        *,
        client: Any = None,
        address: str | None = None,
        call_timeout: float = 5.0,
        resilience: Resilience | None = None,
    ) -> None:
        if call_timeout <= 0:
            raise InvalidArgument("call_timeout must be > 0")
        self._client = client
        self._owns_client = client is None
        self._address = address
        self._timeout = call_timeout
        self._resilience = resilience or Resilience()

    @property
    def breaker_state(self) -> BreakerState:
        return self._resilience.breaker_state

    async def open(self) -> Self:
        """Build the client now (once, at start-up) unless one was passed in."""
        if self._client is None:
            self._client = await open_dapr_client(self._address)
        return self

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.close()


class DaprStateStore(SidecarComponent):
    """StateStore over a Dapr state component (``stateStoreName``), namespaced by ``key_prefix``.

    Pass ``client`` to share one ``DaprClient`` (the caller closes it), or let :meth:`open`
    build one for ``address``. ``absent_etag=None`` uses first-write concurrency without an
    ETag instead, for components whose first-write is a true insert (not Redis).
    """

    def __init__(
        self,
        store_name: str = "statestore",
        *,
        key_prefix: str = "",
        client: Any = None,
        address: str | None = None,
        call_timeout: float = 5.0,
        resilience: Resilience | None = None,
        check_missing: bool = True,
        absent_etag: str | None = ABSENT_ETAG,
    ) -> None:
        if not isinstance(store_name, str) or not store_name.strip():
            raise InvalidArgument("store_name must be a non-empty string")
        if "||" in check_prefix(key_prefix) or call_timeout <= 0:
            raise InvalidArgument("key_prefix may not contain '||'; call_timeout must be > 0")
        super().__init__(
            client=client, address=address, call_timeout=call_timeout, resilience=resilience
        )
        self._store = store_name
        self._prefix = key_prefix
        self._check_missing = check_missing
        self._absent_etag = absent_etag

    def __repr__(self) -> str:
        return f"DaprStateStore({self._store!r}, key_prefix={self._prefix!r})"

    async def __aenter__(self) -> DaprStateStore:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the port ---------------------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        full = self._key(key)
        resp = await self._call(lambda c: c.get_state(self._store, full))
        return _versioned(resp.data, resp.etag)

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        full = [self._key(k) for k in keys]
        if not full:
            return {}

        async def fetch(client: Any) -> dict[str, Versioned]:
            resp = await client.get_bulk_state(self._store, full, parallelism=min(len(full), 16))
            out: dict[str, Versioned] = {}
            for item in resp.items:
                if item.error:
                    raise StoreUnavailable(f"bulk get of {item.key!r}: {item.error}")
                value = _versioned(item.data, item.etag)
                if value is not None:
                    out[item.key[len(self._prefix) :]] = value
            return out

        return await self._call(fetch)

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag:
        if not isinstance(value, bytes):
            raise InvalidArgument("state values are bytes")
        full = self._key(key)
        metadata = {"ttlInSeconds": _ttl(check_ttl(ttl_seconds))}
        if isinstance(expect, str) and self._check_missing:
            await self._expect_current(key, expect)
        etag, options = self._condition(expect)
        await self._call(
            lambda c: c.save_state(
                self._store, full, value, etag=etag, options=options, state_metadata=metadata
            ),
            conditional=expect is not None,
        )
        resp = await self._call(lambda c: c.get_state(self._store, full))
        return Etag(resp.etag) if resp.etag and bytes(resp.data) == value else SUPERSEDED

    async def delete(self, key: str, *, expect: Etag | None = None) -> None:
        full = self._key(key)
        if expect is not None and self._check_missing:
            await self._expect_current(key, expect)
        await self._call(
            lambda c: c.delete_state(self._store, full, etag=expect),
            conditional=expect is not None,
        )

    async def transact(self, operations: Sequence[Operation]) -> None:
        from dapr.clients.grpc._request import (
            TransactionalStateOperation,
            TransactionOperationType,
        )

        check_operations(operations)
        if not operations:
            return
        expected = {op.key: op.expect for op in operations if op.expect is not None}
        if expected:
            current = await self.bulk_get(list(expected))
            for key, expect in expected.items():
                _check_expectation(key, expect, current.get(key))
        ops = []
        for op in operations:
            if isinstance(op, Upsert):
                etag, _ = self._condition(op.expect)  # no per-operation options in the SDK
                ttl = {"ttlInSeconds": _ttl(op.ttl_seconds)}
                ops.append(
                    TransactionalStateOperation(self._key(op.key), op.value, etag, metadata=ttl)
                )
            elif isinstance(op, Delete):
                ops.append(
                    TransactionalStateOperation(
                        self._key(op.key),
                        etag=op.expect,
                        operation_type=TransactionOperationType.delete,
                    )
                )
        await self._call(
            lambda c: c.execute_state_transaction(self._store, ops), conditional=bool(expected)
        )

    async def ping(self) -> None:
        await self.get("wsmanager.ping")

    # -- internals --------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if "||" in check_key(key):
            raise InvalidArgument("Dapr state keys may not contain '||'")
        return self._prefix + key

    def _condition(self, expect: Expect) -> tuple[str | None, Any]:
        """The ETag and StateOptions that make Dapr check ``expect`` (see module doc)."""
        if isinstance(expect, Absent):
            if self._absent_etag is not None:
                return self._absent_etag, None
            from dapr.clients.grpc._state import Concurrency, StateOptions

            return None, StateOptions(concurrency=Concurrency.first_write)
        return expect, None

    async def _expect_current(self, key: str, expect: Etag) -> None:
        _check_expectation(key, expect, await self.get(key))

    async def _call(
        self, request: Callable[[Any], Awaitable[T]], *, conditional: bool = False
    ) -> T:
        client = self._client
        if client is None:
            raise Internal(f"{self!r} used before open()")
        return await guarded_call(
            self._resilience,
            lambda: request(client),
            timeout=self._timeout,
            map_error=lambda exc: self._error(exc, conditional),
            unavailable=StoreUnavailable,
        )

    def _error(self, exc: Exception, conditional: bool) -> WsmError:
        code, text = rpc_status(exc)
        if code == "ABORTED" or (conditional and code == "INVALID_ARGUMENT"):
            # INVALID_ARGUMENT on a conditional write: an ETag the store cannot parse, which
            # therefore is not the current one.
            return ConcurrencyConflict(f"ETag mismatch in state store {self._store!r}: {text}")
        if code in ("INTERNAL", "UNKNOWN") and any(marker in text for marker in _REFUSED):
            return ConcurrencyConflict(f"state store {self._store!r} refused the write: {text}")
        if isinstance(exc, TimeoutError):
            text = f"no answer in {self._timeout} s"
        return StoreUnavailable(f"Dapr state store {self._store!r}: {code or 'error'}: {text}")


def _versioned(data: bytes, etag: str) -> Versioned | None:
    # Presence is the ETag's: an existing key may hold b"".
    return Versioned(bytes(data), Etag(etag)) if etag else None


def _ttl(ttl_seconds: float | None) -> str:
    # Dapr takes whole seconds; rounding up never expires a record early. -1 = no expiry.
    return "-1" if ttl_seconds is None else str(max(1, math.ceil(ttl_seconds)))


def _check_expectation(key: str, expect: Expect, current: Versioned | None) -> None:
    if isinstance(expect, Absent):
        if current is not None:
            raise ConcurrencyConflict(f"first write of {key!r}: key already exists")
    elif expect is not None and (current is None or current.etag != expect):
        raise ConcurrencyConflict(f"ETag mismatch on {key!r}")
