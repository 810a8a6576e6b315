"""A holder on the Dapr adapters shows their circuit breakers in ``/ready`` and ``/metrics``.

The store and publisher go through the real SDK to the sidecar stand-in, which the test stops
and starts. The breakers read a clock the test moves, so "open" and "half-open" are exact.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from tests.integration.holder_support import TOKEN, Holder, holder_settings, running_holder
from tests.support.dapr_sidecar import DaprSidecar, make_dapr_store, new_dapr_prefix
from wsmanager.adapters.dapr_pubsub import DaprPublisher
from wsmanager.adapters.resilience import CircuitBreaker, Resilience
from wsmanager.core.errors import StoreUnavailable, Unavailable
from wsmanager.holder.app import create_app
from wsmanager.ports import Message

RESET = 10.0


def resilience(now: list[float]) -> Resilience:
    """Two failed calls open the breaker; it turns half-open when the test moves ``now``."""
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=RESET, monotonic=lambda: now[0])
    return Resilience(attempts=2, initial_backoff=0.005, max_backoff=0.02, breaker=breaker)


async def circuit_gauges(holder: Holder) -> dict[str, float]:
    status, text = await holder.call("GET", "/metrics", auth=False)
    assert status == 200
    found = re.findall(r'^wsm_dapr_circuit_open\{component="(\w+)"\} (\S+)$', text, re.M)
    return {component: float(value) for component, value in found}


async def ready(holder: Holder) -> tuple[int, dict[str, Any]]:
    status, body = await holder.call("GET", "/ready", auth=False)
    assert isinstance(body, dict)
    return status, body


async def test_open_breakers_make_the_holder_unready_and_show_in_metrics(redis_url: str) -> None:
    now = [0.0]
    car = DaprSidecar(redis_url).start()
    store = await make_dapr_store(car, new_dapr_prefix(), resilience=resilience(now))
    publisher = await DaprPublisher(address=car.grpc_address, resilience=resilience(now)).open()
    message = Message("breaker-test", b'{"n": 1}')
    app = create_app(holder_settings(), token=TOKEN, store=store, publisher=publisher)
    try:
        async with running_holder(app) as holder:
            status, body = await ready(holder)
            assert status == 200 and body["checks"]["circuit"] == "ok"
            assert body["breakers"] == {"statestore": "closed", "pubsub": "closed"}
            assert await circuit_gauges(holder) == {"statestore": 0.0, "pubsub": 0.0}

            car.stop()  # the sidecar goes away: calls fail, are retried, and open the breakers
            for _ in range(2):
                with pytest.raises(StoreUnavailable):
                    await store.get("k")
                with pytest.raises(Unavailable):
                    await publisher.publish(message)
            assert {store.breaker_state, publisher.breaker_state} == {"open"}

            status, body = await ready(holder)
            assert status == 503 and body["error"]["code"] == "UNAVAILABLE"
            assert body["checks"]["circuit"] == "open: statestore, pubsub"
            assert body["checks"]["store"].startswith("unavailable")
            assert body["breakers"] == {"statestore": "open", "pubsub": "open"}
            assert await circuit_gauges(holder) == {"statestore": 1.0, "pubsub": 1.0}
            assert (await holder.call("GET", "/health", auth=False))[0] == 200

            car.start()  # back on the same ports
            car.point_sdk_here()
            deadline = time.monotonic() + 15  # gRPC reconnects on its own backoff (1 s, x1.6)
            while True:
                now[0] += RESET  # half-open: /ready's store ping is the trial call
                status, body = await ready(holder)
                if status == 200:
                    break
                assert time.monotonic() < deadline, f"never ready again: {body}"
                await asyncio.sleep(0.3)
            # A half-open breaker does not fail readiness: the publisher's trial call may be
            # a long time coming on a quiet holder.
            assert body["breakers"] == {"statestore": "closed", "pubsub": "half_open"}
            assert await circuit_gauges(holder) == {"statestore": 0.0, "pubsub": 0.0}
            await publisher.publish(message)
            assert publisher.breaker_state == "closed"
            store.drop_namespace()
    finally:
        await publisher.close()
        await store.close()
        car.stop()
