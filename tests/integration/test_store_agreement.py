"""Differential test: random operation sequences give the same results on every backend.

Hypothesis drives memory, SQLite and Redis (all real, from ``conftest.all_backends``) with the
same saves (no ETag, a remembered ETag, ``ABSENT``, a bogus ETag), deletes, transactions, gets
and bulk gets over a small key pool, and asserts identical values, presence and conflicts.
ETags are opaque, so they are never compared across stores: each store's own ETags are kept
per key (a bundle of snapshots for stale ones, the last known for current ones).
Rules are synchronous; the async stores run on one ``asyncio.Runner`` per example.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from tests.integration.conftest import Backend, drop_namespace, new_prefix
from wsmanager.core.errors import ConcurrencyConflict
from wsmanager.ports import ABSENT, Delete, Etag, Expect, Operation, StateStore, Upsert

T = TypeVar("T")

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.binary(max_size=6)
TTLS = st.sampled_from([None, None, 3600.0])  # long: exercises the TTL paths, never fires here
# How an operation states its expectation; "last" = this store's last known ETag for the key.
MODES = st.sampled_from(["none", "last", "absent", "bogus"])
BOGUS = Etag("bogus-etag")
CONFLICT = "conflict"

#: One snapshot of every store's ETag for a key (store name -> ETag), for stale-ETag writes.
Token = tuple[str, dict[str, Etag]]


class StoreAgreement(RuleBasedStateMachine):
    def __init__(self, makers: dict[str, Callable[[str], StateStore]]) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        prefix = new_prefix()
        self.stores = {name: make(prefix) for name, make in makers.items()}
        self.last: dict[str, dict[str, Etag]] = {name: {} for name in self.stores}

    tokens = Bundle("tokens")

    # -- helpers ---------------------------------------------------------------------------

    def each(self, call: Callable[[str, StateStore], Awaitable[T]]) -> dict[str, T | str]:
        """Run ``call`` on every store; a conflict is a result (``"conflict"``) like any other."""

        async def one(name: str, store: StateStore) -> T | str:
            try:
                return await call(name, store)
            except ConcurrencyConflict:
                return CONFLICT

        return {name: self.runner.run(one(name, s)) for name, s in self.stores.items()}

    @staticmethod
    def agree(results: dict[str, Any]) -> Any:
        outcomes = list(results.values())
        assert all(o == outcomes[0] for o in outcomes), f"stores disagree: {results}"
        return outcomes[0]

    def expect(self, name: str, key: str, mode: str) -> Expect:
        if mode == "last":
            return self.last[name].get(key, BOGUS)
        return {"none": None, "absent": ABSENT, "bogus": BOGUS}[mode]

    def remember(self, key: str, etags: dict[str, Etag] | None) -> None:
        for name in self.stores:
            if etags is None:
                self.last[name].pop(key, None)
            else:
                self.last[name][key] = etags[name]

    def refresh(self, keys: list[str]) -> None:
        """Learn every store's current ETags for ``keys`` (a transaction returns none)."""
        found = self.each(lambda _, s: s.bulk_get(keys))
        for key in keys:
            present = {name: got[key].etag for name, got in found.items() if key in got}
            self.remember(key, present if len(present) == len(self.stores) else None)

    # -- rules -----------------------------------------------------------------------------

    @rule(target=tokens, key=KEYS, value=VALUES, mode=MODES, ttl=TTLS)
    def save(self, key: str, value: bytes, mode: str, ttl: float | None) -> Any:
        results = self.each(
            lambda n, s: s.save(key, value, expect=self.expect(n, key, mode), ttl_seconds=ttl)
        )
        if self.agree({n: r == CONFLICT for n, r in results.items()}):
            return multiple()
        etags = {n: Etag(str(r)) for n, r in results.items()}
        self.remember(key, etags)
        return (key, etags)

    @rule(target=tokens, token=tokens, value=VALUES)
    def save_with_token(self, token: Token, value: bytes) -> Any:
        key, etags = token
        results = self.each(lambda n, s: s.save(key, value, expect=etags[n]))
        if self.agree({n: r == CONFLICT for n, r in results.items()}):
            return multiple()
        new = {n: Etag(str(r)) for n, r in results.items()}
        self.remember(key, new)
        return (key, new)

    @rule(key=KEYS, mode=st.sampled_from(["none", "last", "bogus"]))
    def delete(self, key: str, mode: str) -> None:
        etags = {n: self.expect(n, key, mode) for n in self.stores}
        results = self.each(lambda n, s: s.delete(key, expect=etags[n]))
        if self.agree(results) != CONFLICT:
            self.remember(key, None)

    @rule(token=tokens)
    def delete_with_token(self, token: Token) -> None:
        key, etags = token
        if self.agree(self.each(lambda n, s: s.delete(key, expect=etags[n]))) != CONFLICT:
            self.remember(key, None)

    @rule(
        ops=st.lists(
            st.tuples(KEYS, st.booleans(), MODES, VALUES, TTLS),
            max_size=3,
            unique_by=lambda op: op[0],
        )
    )
    def transact(self, ops: list[tuple[str, bool, str, bytes, float | None]]) -> None:
        def operations(name: str) -> list[Operation]:
            out: list[Operation] = []
            for key, is_delete, mode, value, ttl in ops:
                expect = self.expect(name, key, mode)
                if is_delete:
                    out.append(Delete(key, expect=expect))
                else:
                    out.append(Upsert(key, value, expect=expect, ttl_seconds=ttl))
            return out

        self.agree(self.each(lambda n, s: s.transact(operations(n))))
        self.refresh([op[0] for op in ops])

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        found = self.each(lambda _, s: s.get(key))
        self.agree({n: None if v is None else v.value for n, v in found.items()})
        self.refresh([key])

    @rule(keys=st.lists(KEYS, max_size=4))
    def bulk_get(self, keys: list[str]) -> None:
        found = self.each(lambda _, s: s.bulk_get(keys))
        self.agree({n: {k: v.value for k, v in got.items()} for n, got in found.items()})

    @invariant()
    def same_contents(self) -> None:
        found = self.each(lambda _, s: s.bulk_get(["a", "b", "c"]))
        self.agree({n: {k: v.value for k, v in got.items()} for n, got in found.items()})

    def teardown(self) -> None:
        async def clean(store: StateStore) -> None:
            try:
                await drop_namespace(store)
            finally:
                await store.close()

        try:
            for store in self.stores.values():
                self.runner.run(clean(store))
        finally:
            self.runner.close()


def test_backends_agree(all_backends: dict[str, Backend]) -> None:
    makers = {name: backend.make for name, backend in all_backends.items()}
    run_state_machine_as_test(
        lambda: StoreAgreement(makers),
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
