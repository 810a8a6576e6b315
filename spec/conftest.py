"""Settings profiles and state-store backends for the spec.

Profiles (pick one with ``HYPOTHESIS_PROFILE``; ``ci`` is the default):

* ``ci``: enough examples and steps to be meaningful: 400 examples of up to 50 steps on SQLite
  and on Redis, four times as many on the (much faster) memory store, a quarter as many on
  Dapr (the SDK through the sidecar stand-in: several round trips per operation); about
  3¾ minutes in all on 2 cores;
* ``deep``: long runs for hunting rare interleavings: 5,000 examples of up to 100 steps per
  real store (a quarter on Dapr), 20,000 on memory (an hour or more).

Seeds are random (``derandomize=False``). A failure prints its steps (the falsifying example),
the seed to pass back with ``pytest spec --hypothesis-seed=<seed>`` and a ``@reproduce_failure``
blob (``print_blob=True``); the failing example is also kept in ``.hypothesis/`` and is replayed
first on the next run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from spec.stores import SpecBackend
from tests.support.dapr_sidecar import DaprSidecar

__all__ = ["DAPR_DIVISOR", "MEMORY_FACTOR", "PROFILES", "spec_dapr_sidecar", "spec_settings"]

_COMMON = dict(
    deadline=None,  # real I/O: a slow step is not a bug
    print_blob=True,
    derandomize=False,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILES: dict[str, settings] = {
    "ci": settings(max_examples=400, stateful_step_count=50, **_COMMON),  # type: ignore[arg-type]
    "deep": settings(max_examples=5_000, stateful_step_count=100, **_COMMON),  # type: ignore[arg-type]
}
#: The memory store is several times faster than SQLite and Redis: it gets more examples.
MEMORY_FACTOR = 4
#: Dapr is several times slower (each save is a read, a write and a read-back over gRPC, to a
#: stand-in on another thread): it gets fewer, so ``pytest spec`` stays within CI's budget.
DAPR_DIVISOR = 4
for _name, _profile in PROFILES.items():
    settings.register_profile(_name, _profile)


def spec_settings(store: str) -> settings:
    """The profile named by ``HYPOTHESIS_PROFILE`` (default ``ci``), for one store."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    profile = PROFILES[name] if name in PROFILES else settings.get_profile(name)
    if store == "memory":
        return settings(profile, max_examples=profile.max_examples * MEMORY_FACTOR)
    if store == "dapr":
        return settings(profile, max_examples=max(1, profile.max_examples // DAPR_DIVISOR))
    return profile


@pytest.fixture(scope="session")
def spec_dapr_sidecar(redis_url: str) -> Iterator[DaprSidecar]:
    """One Dapr sidecar stand-in for the session, on the session's Redis."""
    with DaprSidecar(redis_url) as sidecar:
        yield sidecar


@pytest.fixture(scope="session")
def spec_backends(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Callable[[], SpecBackend]]:
    """Backend makers by store name; Redis and the sidecar are only started when asked for."""
    path: Path = tmp_path_factory.mktemp("spec") / "state.db"
    return {
        "memory": SpecBackend.memory,
        "sqlite": lambda: SpecBackend.sqlite(path),
        "redis": lambda: SpecBackend.redis(request.getfixturevalue("redis_url")),
        "dapr": lambda: SpecBackend.dapr(request.getfixturevalue("spec_dapr_sidecar")),
    }
