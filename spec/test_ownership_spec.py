"""Rules R1-R12 hold on every state store: the ownership state machine against each backend.

The machine and its invariants are in ``spec/machine.py``; the rules in plain words, and which
invariant checks which rule, are in ``spec/README.md``.

Every run prints its seed (shown by pytest when the test fails). To replay a failure:

* just rerun: Hypothesis keeps the failing example in ``.hypothesis/`` and tries it first;
* or rerun that test with the printed seed:
  ``pytest "spec/test_ownership_spec.py::test_ownership_rules_hold[redis]" --hypothesis-seed=N``;
* or set ``SPEC_REPRODUCE_FAILURE="<version> <blob>"`` from the printed ``@reproduce_failure``
  line and rerun the same test.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from hypothesis import reproduce_failure, seed
from hypothesis.stateful import run_state_machine_as_test

from spec.conftest import spec_settings
from spec.machine import OwnershipSpec
from spec.stores import STORE_NAMES, SpecBackend


def machine_factory(
    backend: SpecBackend, request: pytest.FixtureRequest
) -> Callable[[], OwnershipSpec]:
    """A factory for the machine, seeded (and printed) unless ``--hypothesis-seed`` is given."""

    def factory() -> OwnershipSpec:
        return OwnershipSpec(backend)

    test_id = request.node.nodeid
    blob = os.environ.get("SPEC_REPRODUCE_FAILURE")
    if blob:
        version, data = blob.split(maxsplit=1)
        data = data.removeprefix("b").strip("'\"")
        print(f"{test_id}: replaying @reproduce_failure({version!r}, {data!r})")
        return reproduce_failure(version, data.encode())(factory)
    forced = request.config.getoption("hypothesis_seed", default=None)
    if forced is not None:
        print(f"{test_id}: seed {forced} (from --hypothesis-seed)")
        return factory
    chosen = random.SystemRandom().getrandbits(32)
    print(f'{test_id}: seed {chosen}; replay: pytest "{test_id}" --hypothesis-seed={chosen}')
    return seed(chosen)(factory)


@pytest.mark.parametrize("store", STORE_NAMES)
def test_ownership_rules_hold(
    store: str,
    spec_backends: dict[str, Callable[[], SpecBackend]],
    request: pytest.FixtureRequest,
) -> None:
    backend = spec_backends[store]()
    factory = machine_factory(backend, request)
    # (hypothesis annotates the factory as a class; any callable returning a machine works)
    run_state_machine_as_test(factory, settings=spec_settings(store))  # type: ignore[arg-type]
