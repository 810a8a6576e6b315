"""Every function end to end: functions-framework (ASGI) -> real holders -> real Redis -> a
real WebSocket server, with CloudEvents in binary and structured mode and plain JSON calls.

Also the error contract (status codes, error events, "nothing changed") and idempotency
(a redelivered event is answered from its first result and acts once).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from tests.functions.conftest import Cluster
from tests.functions.harness import Response, command_event
from wsmanager.functions.commands import ERROR_TYPE, RESULT_PREFIX
from wsmanager.functions.dedupe import dedupe_key

__all__: list[str] = []

MODES = ["binary", "structured", "json"]


async def run(
    cluster: Cluster, function: str, kind: str, data: Any, mode: str, method: str = "POST"
) -> tuple[int, Any]:
    """Call ``function`` in ``mode``; return the status and the result data, checking the
    reply's shape: a result event (CloudEvent callers) or the holder's JSON (plain callers)."""
    if mode == "json":
        if method == "GET":
            params = {k: str(v) for k, v in data.items()}
            resp = await cluster.functions.call(function, "GET", params=params)
        else:
            resp = await cluster.functions.call(function, method, json_body=data)
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "ce-type" not in resp.headers
        return resp.status, resp.json()
    resp = await cluster.functions.event(function, kind, data, mode=mode)
    event = resp.event()
    expected = RESULT_PREFIX + kind if resp.status == 200 else ERROR_TYPE
    assert event["type"] == expected, resp
    assert event["source"] == f"/wsmanager/functions/{function}"
    assert event["command"] == kind
    return resp.status, event.data


async def connect(cluster: Cluster, mode: str = "binary", **extra: Any) -> str:
    status, data = await run(
        cluster, "connect", "connect", {"url": cluster.echo.url, **extra}, mode
    )
    assert status == 200, data
    assert data["status"] == "CONNECTED"
    return str(data["connection_id"])


async def listed(cluster: Cluster) -> list[dict[str, Any]]:
    resp = await cluster.functions.call("list", "GET")
    assert resp.status == 200, resp
    return list(resp.json()["connections"])


@pytest.mark.parametrize("mode", MODES)
async def test_connect_send_sendraw_disconnect(cluster: Cluster, mode: str) -> None:
    cid = await connect(cluster, mode, tags={"desk": "fx"})
    status, data = await run(cluster, "send", "send", {"id": cid, "message": "ping"}, mode)
    assert (status, data) == (200, {"response": "ping", "content_type": "text/plain"})
    payload = base64.b64encode(b"\x00\x01binary").decode()
    msg = {"id": cid, "message": payload, "content_type": "application/octet-stream"}
    status, data = await run(cluster, "send", "send", {**msg, "timeout_ms": 5000}, mode)
    assert status == 200 and base64.b64decode(data["response"]) == b"\x00\x01binary"
    status, data = await run(cluster, "sendraw", "sendraw", {"id": cid, "message": "raw"}, mode)
    assert status == 200, data
    status, data = await run(cluster, "disconnect", "disconnect", {"id": cid}, mode)
    assert status == 200, data
    assert await listed(cluster) == []


@pytest.mark.parametrize("mode", MODES)
async def test_publish_tags_list_get(cluster: Cluster, mode: str) -> None:
    cid = await connect(cluster)
    other = await connect(cluster, tags={"desk": "rates"})
    status, data = await run(cluster, "publish", "publish.start", {"id": cid, "topic": "fx"}, mode)
    assert status == 200 and data["topic"] == "fx"
    stop = "DELETE" if mode == "json" else "POST"
    status, data = await run(cluster, "publish", "publish.stop", {"id": cid}, mode, stop)
    assert status == 200 and data["topic"] == ""
    one = {"id": cid, "key": "desk", "value": "fx"}
    status, data = await run(cluster, "tags", "tags.set", one, mode)
    assert (status, data) == (200, {"key": "desk", "value": "fx"})
    every = {"id": cid, "tags": {"desk": "fx", "tier": "1"}}
    status, data = await run(cluster, "tags", "tags.set", every, mode)
    assert status == 200
    get = "GET" if mode == "json" else "POST"
    status, data = await run(cluster, "tags", "tags.get", {"id": cid}, mode, get)
    assert (status, data) == (200, {"tags": {"desk": "fx", "tier": "1"}})
    if mode == "json":
        status, data = await run(cluster, "list", "list", {"desk": "fx"}, mode, "GET")
    else:
        status, data = await run(cluster, "list", "list", {"tags": {"desk": "fx"}}, mode)
    assert status == 200 and [c["id"] for c in data["connections"]] == [cid]
    status, data = await run(cluster, "list", "get", {"id": other}, mode, get)
    assert status == 200 and data["id"] == other and data["tags"] == {"desk": "rates"}


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_connection_is_not_found(cluster: Cluster, mode: str) -> None:
    missing = str(uuid.uuid4())
    status, data = await run(cluster, "send", "send", {"id": missing, "message": "x"}, mode)
    assert status == 404
    assert data["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("function", "kind", "data", "field"),
    [
        ("connect", "connect", {"url": "http://not-a-websocket"}, "url"),
        ("connect", "connect", {}, "url"),
        ("send", "send", {"message": "no id"}, "id"),
        ("send", "send", {"id": "x", "message": "m", "timeout_ms": "soon"}, "timeout_ms"),
        ("publish", "publish.start", {"id": "x", "topic": ""}, "topic"),
        ("tags", "tags.set", {"id": "x", "key": "k", "value": "v", "colour": "red"}, "colour"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_invalid_data_is_400_naming_the_field_and_changes_nothing(
    cluster: Cluster, mode: str, function: str, kind: str, data: dict[str, Any], field: str
) -> None:
    before = cluster.echo.handshakes
    status, body = await run(cluster, function, kind, data, mode)
    assert status == 400
    assert body["error"]["code"] == "INVALID_ARGUMENT"
    assert field in body["error"]["message"].lower()
    assert cluster.echo.handshakes == before
    assert await listed(cluster) == []


async def test_malformed_and_unknown_events_are_400_and_change_nothing(cluster: Cluster) -> None:
    cid = await connect(cluster)
    before = await listed(cluster)
    bad: list[tuple[str, dict[str, str], bytes]] = []
    headers, body = command_event("connect", {"url": cluster.echo.url})
    bad.append(("connect", {k: v for k, v in headers.items() if k != "ce-id"}, body))
    bad.append(("connect", {**headers, "ce-specversion": "7.0"}, body))
    bad.append(("send", headers, body))  # a connect event sent to the send function
    bad.append(("connect", {**headers, "ce-type": "com.example.unknown"}, body))
    bad.append(("connect", {"Content-Type": "application/cloudevents+json"}, b'{"id": 1'))
    bad.append(("connect", {**headers, "Content-Type": "application/json"}, b"[1, 2]"))
    for function, hdrs, payload in bad:
        resp = await cluster.functions.call(function, body=payload, headers=hdrs)
        assert resp.status == 400, (function, hdrs, resp)
        event = resp.event()
        assert event["type"] == ERROR_TYPE and event["statuscode"] == "400"
        assert event.data["error"]["code"] == "INVALID_ARGUMENT"
    assert await listed(cluster) == before
    assert cluster.echo.handshakes == 1
    send = await cluster.functions.call("send", "GET")
    assert send.status == 405 and send.json()["error"]["code"] == "UNIMPLEMENTED"
    assert [c["id"] for c in await listed(cluster)] == [cid]


@pytest.mark.parametrize("modes", [("binary", "binary"), ("binary", "structured")])
async def test_redelivered_connect_returns_the_first_result_and_connects_once(
    cluster: Cluster, modes: tuple[str, str]
) -> None:
    data = {"url": cluster.echo.url}
    replies: list[Response] = []
    for mode in modes:
        replies.append(
            await cluster.functions.event("connect", "connect", data, mode=mode, event_id="c-1")
        )
    first, second = replies
    assert first.status == second.status == 200
    assert first.event().data == second.event().data
    # The reply to a redelivery is the same event: same id, so consumers can drop it too.
    assert first.event()["id"] == second.event()["id"]
    assert cluster.echo.handshakes == 1
    assert [c["id"] for c in await listed(cluster)] == [first.event().data["connection_id"]]


async def test_redelivered_disconnect_and_publish_act_once(cluster: Cluster) -> None:
    cid = await connect(cluster)
    start = {"id": cid, "topic": "t1"}
    a = await cluster.functions.event("publish", "publish.start", start, event_id="p-1")
    b = await cluster.functions.event("publish", "publish.start", start, event_id="p-1")
    assert a.status == b.status == 200 and a.event().data == b.event().data
    s1 = await cluster.functions.event("publish", "publish.stop", {"id": cid}, event_id="p-2")
    s2 = await cluster.functions.event("publish", "publish.stop", {"id": cid}, event_id="p-2")
    assert s1.status == s2.status == 200
    d1 = await cluster.functions.event("disconnect", "disconnect", {"id": cid}, event_id="d-1")
    d2 = await cluster.functions.event("disconnect", "disconnect", {"id": cid}, event_id="d-1")
    # Without deduplication the second would be 404: the connection is gone.
    assert d1.status == d2.status == 200
    fresh = await cluster.functions.event("disconnect", "disconnect", {"id": cid}, event_id="d-2")
    assert fresh.status == 404


async def test_plain_json_redelivery_with_idempotency_key(cluster: Cluster) -> None:
    headers = {"Idempotency-Key": "k-42"}
    data = {"url": cluster.echo.url}
    a = await cluster.functions.call("connect", json_body=data, headers=headers)
    b = await cluster.functions.call("connect", json_body=data, headers=headers)
    assert a.status == b.status == 200 and a.json() == b.json()
    assert cluster.echo.handshakes == 1


async def test_reused_event_id_with_other_data_is_refused(cluster: Cluster) -> None:
    first = await cluster.functions.event(
        "connect", "connect", {"url": cluster.echo.url}, event_id="r"
    )
    assert first.status == 200
    other = {"url": cluster.echo.url, "tags": {"x": "y"}}
    again = await cluster.functions.event("connect", "connect", other, event_id="r")
    assert again.status == 400
    assert cluster.echo.handshakes == 1


async def test_duplicate_in_progress_is_retryable_and_changes_nothing(cluster: Cluster) -> None:
    # Another delivery of this event holds the pending record (as while it is running).
    key = dedupe_key("/tests/functions", "busy-1")
    pending = json.dumps({"state": "pending", "fingerprint": "whatever"}).encode()
    await cluster.store.save(key, pending, ttl_seconds=60)
    data = {"url": cluster.echo.url}
    resp = await cluster.functions.event("connect", "connect", data, event_id="busy-1")
    assert resp.status == 503
    assert resp.event().data["error"]["code"] == "UNAVAILABLE"
    assert cluster.echo.handshakes == 0
    # Once the first delivery is gone (its record expired or released), a redelivery acts.
    await cluster.store.delete(key)
    resp = await cluster.functions.event("connect", "connect", data, event_id="busy-1")
    assert resp.status == 200 and cluster.echo.handshakes == 1


async def test_correlation_id_travels_to_the_holder(cluster: Cluster) -> None:
    cid = await connect(cluster)
    resp = await cluster.functions.event(
        "send", "send", {"id": cid, "message": "x"}, event_id="corr-7"
    )
    assert resp.status == 200
    assert resp.event()["correlationid"] == "corr-7"
    assert resp.headers["X-Correlation-ID"] == "corr-7"
    plain = await cluster.functions.call(
        "send", json_body={"id": cid, "message": "x"}, headers={"X-Correlation-Id": "corr-8"}
    )
    assert plain.headers["X-Correlation-ID"] == "corr-8"
