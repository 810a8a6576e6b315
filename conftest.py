"""Repository-wide pytest fixtures: the real components tests, specs and benchmarks run against.

``redis_url`` (session): a real Redis, never a fake (brief §6), from the first that works of
``WSM_TEST_REDIS_URL``, a testcontainers Redis when a Docker engine answers, or a private
``redis-server`` started here (free port, temporary directory, no persistence) and stopped at the
end of the session. The launcher lives in :mod:`tests.support.redis_server` for reuse.

This file sits at the repository root so it applies to ``pytest tests`` and ``pytest spec``
alike, and so that the root directory is on ``sys.path`` and ``tests.support`` is importable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.support.redis_server import INSTALL_HINT, RedisServer, RedisServerError

__all__ = ["redis_url"]


def _docker_answers() -> bool:
    """True if a Docker engine answers a ping within a second or two (no engine: no wait)."""
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure just means "no usable engine"
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real, empty-enough Redis for this session (tests namespace their keys)."""
    configured = os.environ.get("WSM_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer() as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    if shutil.which("redis-server") is None:
        pytest.fail(f"tests need a real Redis and none is available: {INSTALL_HINT}", pytrace=False)
    server = RedisServer()
    try:
        server.start()
    except RedisServerError as exc:
        server.close()
        pytest.fail(f"could not start redis-server: {exc}", pytrace=False)
    try:
        yield server.url
    finally:
        server.close()
