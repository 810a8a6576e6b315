"""Operational routes, open without a token: ``/health``, ``/ready``, ``/metrics``,
``/openapi.json``.

* ``/health`` is liveness: 200 while the process serves HTTP at all. It checks nothing else, so
  a failing store never gets a healthy pod restarted (R5: a store outage is not our death).
* ``/ready`` is readiness: 200 only when the manager has started, shutdown has not begun, the
  state store answers ``ping`` within :data:`READY_TIMEOUT` seconds and this holder's lease is
  fresh (not self-fenced, R8: heartbeat, or record renewal when heartbeats are off) and no
  backend's circuit breaker is open (Dapr adapters: ``breakers`` in the body); else 503 with the
  failing check named.
* ``/metrics`` is the Prometheus text format of the holder's own registry.
* ``/openapi.json`` describes every route the app serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from wsmanager import __version__
from wsmanager.adapters.resilience import BreakerState
from wsmanager.core.errors import Unavailable, WsmError, error_body
from wsmanager.holder.metrics import CONTENT_TYPE
from wsmanager.holder.openapi import build_openapi
from wsmanager.holder.routes_common import HOLDER, RouteSpec, json_response

__all__ = ["READY_TIMEOUT", "ROUTES"]

READY_TIMEOUT = 2.0
log = logging.getLogger("wsmanager.holder")


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str
    instance_id: str
    incarnation: str
    version: str


class Ready(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str
    checks: dict[str, str]
    #: Circuit breaker state (closed|open|half_open) by component (statestore|pubsub), for the
    #: backends that have one (the Dapr adapters).
    breakers: dict[str, str] = {}


async def health(request: web.Request) -> web.Response:
    state = request.app[HOLDER]
    return json_response(
        {
            "status": "ok",
            "instance_id": state.owner.instance_id,
            "incarnation": state.owner.incarnation,
            "version": __version__,
        }
    )


async def _store_check(request: web.Request) -> str | None:
    """``None`` if the store answers, else why not (never the backend's raw text)."""
    components = request.app[HOLDER].components
    if components is None:
        return "not open"
    try:
        await asyncio.wait_for(components.store.ping(), READY_TIMEOUT)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g} s"
    except WsmError as exc:
        return exc.code
    except Exception:  # a broken adapter must make us unready, not 500
        log.exception("state store ping failed unexpectedly")
        return "INTERNAL"
    return None


def _breaker_states(store: object, publisher: object) -> dict[str, BreakerState]:
    """Breaker states of the backends that have a breaker (``breaker_state``), by component."""
    states: dict[str, BreakerState] = {}
    for component, backend in (("statestore", store), ("pubsub", publisher)):
        state = getattr(backend, "breaker_state", None)
        if isinstance(state, str):
            states[component] = state  # type: ignore[assignment]  # from a Resilience
    return states


def _circuit_check(states: Mapping[str, BreakerState]) -> str:
    # Only "open" fails readiness. A half-open breaker lets the next call through as a trial;
    # if it made the pod unready, a component without traffic (the publisher) might never get
    # that call, and the pod would stay unready although the sidecar is back.
    opened = [component for component, state in states.items() if state == "open"]
    return f"open: {', '.join(opened)}" if opened else "ok"


async def ready(request: web.Request) -> web.Response:
    state = request.app[HOLDER]
    checks: dict[str, str] = {}
    if state.stopping.is_set():
        checks["manager"] = "stopping"
    elif not state.started:
        checks["manager"] = "starting"
    else:
        checks["manager"] = "ok"
    problem = await _store_check(request)
    checks["store"] = "ok" if problem is None else f"unavailable: {problem}"
    components = state.components
    if components is not None:
        # R8: a holder whose lease lapsed (heartbeat, or record renewal with heartbeats off)
        # may not act on its sockets; traffic should go elsewhere until it has re-confirmed.
        # The gate also stays closed after a lapse until the records are re-confirmed.
        fenced = components.ownership.fenced() or not components.manager.gate.may_act()
        checks["lease"] = "fenced" if fenced else "ok"
    # Read after the store ping, so that the ping's own outcome is counted in.
    breakers = {} if components is None else _breaker_states(components.store, components.publisher)
    if breakers:
        checks["circuit"] = _circuit_check(breakers)
        state.metrics.set_breaker_states(breakers)
    failing = [name for name, value in checks.items() if value != "ok"]
    state.metrics.ready.set(0 if failing else 1)
    if not failing:
        return json_response({"status": "ready", "checks": checks, "breakers": breakers})
    body: dict[str, Any] = error_body(Unavailable(f"not ready: {', '.join(failing)}"))
    body["checks"] = checks
    body["breakers"] = breakers
    return json_response(body, status=503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[HOLDER]
    components = state.components
    if components is not None:
        # Breakers change state by the clock too (open -> half-open): read them at scrape time.
        state.metrics.set_breaker_states(_breaker_states(components.store, components.publisher))
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return json_response(build_openapi(request.app[HOLDER].routes))


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/health", health, "Health", "Liveness", response=Health, auth=False),
    RouteSpec(
        "GET", "/ready", ready, "Ready", "Readiness: manager started and store answering",
        response=Ready, errors=("UNAVAILABLE",), auth=False,
    ),
    RouteSpec(
        "GET", "/metrics", metrics, "Metrics", "Prometheus metrics", auth=False,
        media_type="text/plain",
    ),
    RouteSpec(
        "GET", "/openapi.json", openapi, "OpenApi", "This document", auth=False,
    ),
)  # fmt: skip
