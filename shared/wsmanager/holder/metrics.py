"""Prometheus metrics of one holder, on a registry of its own (no process-global registry).

A registry per :class:`HolderMetrics` keeps several holders in one process (tests, ``wsm
serve``) from colliding on metric names, and keeps library defaults (process/GC collectors) out
unless asked for. ``/metrics`` renders :meth:`HolderMetrics.render`.

The manager records socket-side facts (sends, latency, publishes, reconnects, timeouts, queue
depth); the app records HTTP-side facts (requests by route and status, audit failures).
Connection counts by status are a gauge the owner of the counts refreshes with
:meth:`HolderMetrics.set_connection_counts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "HolderMetrics"]

#: ``text/plain; version=0.0.4; charset=utf-8``
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Loopback sends take tens of microseconds; remote ones up to the 10 s default timeout.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_STATUSES = ("CONNECTING", "CONNECTED", "RECONNECTING", "DISCONNECTED")


class HolderMetrics:
    """Every metric the holder exports. Attributes are prometheus_client instruments."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "wsm_connections",
            "Connections owned by this holder, by status.",
            ["status"],
            registry=r,
        )
        self.sends = Counter(
            "wsm_sends_total",
            "Messages sent on owned sockets, by kind (send|sendraw) and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.send_latency = Histogram(
            "wsm_send_latency_seconds",
            "Send latency: the correlated round trip (send) or the frame write (sendraw).",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.published = Counter(
            "wsm_published_total",
            "Inbound frames handed to the publisher, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.publish_lag = Histogram(
            "wsm_publish_lag_seconds",
            "Time from receiving an inbound frame to the publisher accepting it.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inbound_frames = Counter(
            "wsm_inbound_frames_total", "Frames received on owned sockets.", registry=r
        )
        self.reconnects = Counter(
            "wsm_reconnects_total", "Reconnect attempts, by outcome.", ["outcome"], registry=r
        )
        self.timeouts = Counter(
            "wsm_send_timeouts_total", "Correlated sends that got no reply in time.", registry=r
        )
        self.queue_depth = Gauge(
            "wsm_send_queue_depth", "Frames waiting in outbound send queues.", registry=r
        )
        self.lifecycle_events = Counter(
            "wsm_lifecycle_events_total", "Lifecycle events emitted, by type.", ["type"], registry=r
        )
        self.http_requests = Counter(
            "wsm_http_requests_total",
            "REST requests answered, by method, route and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "wsm_http_request_seconds",
            "REST request handling time, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_failures = Counter(
            "wsm_audit_failures_total", "Audit records the log sink failed to take.", registry=r
        )
        self.ready = Gauge("wsm_ready", "1 while /ready answers 200, else 0.", registry=r)
        # -- the cluster (R3-R8): forwarding, ownership misses, reclaims, fencing, peers --------
        self.forwards = Counter(
            "wsm_forwards_total",
            "Commands forwarded to the owning holder (R3), by method and outcome "
            "(ok|refused|error|unreachable).",
            ["method", "outcome"],
            registry=r,
        )
        self.ownership_misses = Counter(
            "wsm_ownership_misses_total",
            "Commands for a connection this holder does not own, by reason: not_owned (owner "
            "alive: forwarded or refused) or lapsed (owner past the stale threshold: reclaim).",
            ["reason"],
            registry=r,
        )
        self.reclaim_taken = Counter(
            "wsm_reclaim_taken_total",
            "Connections this holder took over (R7), by trigger (sweep|lazy|drain).",
            ["trigger"],
            registry=r,
        )
        self.reclaim_conflicts = Counter(
            "wsm_reclaim_conflicts_total",
            "Takeovers lost to a concurrent reclaimer or a changed record (CAS, R7).",
            registry=r,
        )
        self.reclaim_sweeps = Counter(
            "wsm_reclaim_sweeps_total", "Reclaim sweeps completed (R7).", registry=r
        )
        self.reclaim_sweep_failures = Counter(
            "wsm_reclaim_sweep_failures_total",
            "Reclaim sweeps that failed (e.g. store unavailable: nothing is reclaimed, R5).",
            registry=r,
        )
        self.adoptions = Counter(
            "wsm_adoptions_total",
            "Records this holder started holding after a takeover, by source "
            "(sweep|lazy|request|reconcile).",
            ["source"],
            registry=r,
        )
        self.self_fence_events = Counter(
            "wsm_self_fence_events_total",
            "Times this holder fenced itself: lease lapsed, sends and publishes stopped (R8).",
            registry=r,
        )
        self.live_peers = Gauge(
            "wsm_live_peers",
            "Holders with a fresh heartbeat at the last discovery (R4), this one included.",
            registry=r,
        )
        # -- backends -----------------------------------------------------------------------
        self.dapr_circuit_open = Gauge(
            "wsm_dapr_circuit_open",
            "1 while the circuit breaker of a Dapr component (statestore|pubsub) is open: its "
            "calls fail at once without reaching the sidecar. 0 when closed or half-open.",
            ["component"],
            registry=r,
        )
        # labels() validates and sorts on every call; the hot paths look their children up here.
        self._send_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        for status in _STATUSES:
            self.connections.labels(status=status).set(0)

    def __repr__(self) -> str:
        return "HolderMetrics()"

    # -- helpers used by the manager and the app -------------------------------------------

    def set_connection_counts(self, counts: Mapping[str, int]) -> None:
        """Replace the per-status connection gauge (statuses absent from ``counts`` read 0)."""
        for status in {*_STATUSES, *counts}:
            self.connections.labels(status=status).set(counts.get(status, 0))

    def set_breaker_states(self, states: Mapping[str, str]) -> None:
        """Refresh ``wsm_dapr_circuit_open`` from breaker states by component. Called when
        ``/metrics`` or ``/ready`` is asked: a breaker turns half-open by the clock alone."""
        for component, state in states.items():
            self.dapr_circuit_open.labels(component=component).set(1 if state == "open" else 0)

    def observe_send(self, kind: str, seconds: float, outcome: str = "ok") -> None:
        children = self._send_children.get((kind, outcome))
        if children is None:
            children = (
                self.sends.labels(kind=kind, outcome=outcome),
                self.send_latency.labels(kind=kind),
            )
            self._send_children[(kind, outcome)] = children
        children[0].inc()
        if outcome == "ok":
            children[1].observe(seconds)
        elif outcome == "timeout":
            self.timeouts.inc()

    def observe_publish(self, lag_seconds: float, outcome: str = "ok", count: int = 1) -> None:
        self.published.labels(outcome=outcome).inc(count)
        if outcome == "ok":
            self.publish_lag.observe(max(lag_seconds, 0.0))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request. ``route`` is the route's pattern (bounded cardinality)."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(method=method, route=route, status=str(status)),
                self.http_latency.labels(route=route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
