"""Fixtures for the multi-process cluster tests: a :class:`Cluster` per test on the session's
Redis (``redis_url``), with the holders' logs shown when the test fails."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import pytest

from tests.cluster.harness import Cluster, DurableRedis

__all__: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    setup = getattr(request.node, "report_setup", None)
    return bool((report is not None and report.failed) or (setup is not None and setup.failed))


@pytest.fixture
async def cluster(
    redis_url: str, tmp_path: Any, request: pytest.FixtureRequest
) -> AsyncIterator[Cluster]:
    """A cluster namespace on the session Redis; holders are started by the test."""
    async with Cluster(redis_url, tmp_path / "cluster", push_interval=0.25) as made:
        try:
            yield made
        finally:
            if _failed(request):
                print(f"\n===== holder logs (in {made.workdir}) =====\n{made.log_tails()}")


@pytest.fixture
def durable_redis() -> Iterator[DurableRedis]:
    """A Redis of this test's own, with an append-only file, that the test may kill and start."""
    server = DurableRedis().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def report(record_property: Callable[[str, object], None]) -> Callable[..., None]:
    """Record measurements (shown with ``-rP`` / ``-s``, and in JUnit XML properties)."""

    def emit(name: str, **values: object) -> None:
        record_property(name, values)
        print(f"CLUSTER-MEASURE {name} {json.dumps(values, sort_keys=True)}")

    return emit
