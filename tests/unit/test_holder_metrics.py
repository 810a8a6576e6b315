"""Holder metrics: an own registry per holder, the helpers, the text format."""

from __future__ import annotations

from wsmanager.holder.metrics import CONTENT_TYPE, HolderMetrics


def test_two_holders_do_not_share_a_registry() -> None:
    a, b = HolderMetrics(), HolderMetrics()
    a.observe_send("send", 0.001)
    assert a.registry.get_sample_value("wsm_sends_total", {"kind": "send", "outcome": "ok"}) == 1
    assert b.registry.get_sample_value("wsm_sends_total", {"kind": "send", "outcome": "ok"}) is None


def test_connection_counts_replace_the_gauge() -> None:
    metrics = HolderMetrics()
    metrics.set_connection_counts({"CONNECTED": 3, "RECONNECTING": 1})
    metrics.set_connection_counts({"CONNECTED": 2})
    value = metrics.registry.get_sample_value
    assert value("wsm_connections", {"status": "CONNECTED"}) == 2
    assert value("wsm_connections", {"status": "RECONNECTING"}) == 0
    assert value("wsm_connections", {"status": "DISCONNECTED"}) == 0


def test_send_outcomes_and_timeouts() -> None:
    metrics = HolderMetrics()
    metrics.observe_send("send", 0.5, "timeout")
    metrics.observe_send("sendraw", 0.0001)
    value = metrics.registry.get_sample_value
    assert value("wsm_send_timeouts_total") == 1
    assert value("wsm_send_latency_seconds_count", {"kind": "sendraw"}) == 1
    assert not value("wsm_send_latency_seconds_count", {"kind": "send"})  # a timeout has no latency


def test_publish_and_request_helpers_and_render() -> None:
    metrics = HolderMetrics()
    metrics.observe_publish(0.002, count=5)
    metrics.observe_publish(-1.0)  # a clock step backwards is not a negative lag
    metrics.observe_request("GET", "/v1/connections", 200, 0.01)
    text = metrics.render().decode()
    assert 'wsm_published_total{outcome="ok"} 6.0' in text
    assert 'wsm_http_requests_total{method="GET",route="/v1/connections",status="200"} 1.0' in text
    assert CONTENT_TYPE.startswith("text/plain")
