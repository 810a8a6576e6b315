"""Decoding requests into commands: CloudEvents in both modes, plain JSON, and refusals.

Pure: no store, no holder. The functional suite checks the same paths end to end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from wsmanager.core.errors import InvalidArgument, InvalidEvent
from wsmanager.functions.commands import COMMAND_PREFIX, FUNCTIONS, PING_TYPE, HolderCall
from wsmanager.functions.decoding import (
    Incoming,
    MethodNotAllowed,
    Mode,
    correlation_of,
    decode,
)

__all__: list[str] = []

CID = "6f1c7c5e-1111-4222-8333-944455556666"


def event(kind: str, data: Any, *, mode: str = "binary", **attrs: str) -> Incoming:
    attributes = {"type": COMMAND_PREFIX + kind, "source": "/tests", "id": "ev-1", **attrs}
    ce = CloudEvent(attributes, data)
    headers, body = (to_binary if mode == "binary" else to_structured)(ce)
    return Incoming.of("POST", dict(headers), body)


def plain(method: str, data: Any = None, *, query: tuple[tuple[str, str], ...] = ()) -> Incoming:
    body = b"" if data is None else json.dumps(data).encode()
    return Incoming.of(method, {"content-type": "application/json"}, body, query)


def call_of(function: str, incoming: Incoming) -> HolderCall:
    inv = decode(function, incoming)
    return inv.command.build(inv.data)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_send_event_becomes_owner_call_with_identity(mode: str) -> None:
    inv = decode("send", event("send", {"id": CID, "message": "hi", "timeout_ms": 2000}, mode=mode))
    assert inv.mode is Mode(mode)
    assert inv.identity == ("/tests", "ev-1")
    assert inv.correlation_id == "ev-1"
    assert inv.connection_id == CID
    call = inv.command.build(inv.data)
    assert (call.method, call.path) == ("POST", f"/v1/connections/{CID}/send")
    assert call.body == {"message": "hi", "timeout_ms": 2000}
    assert call.connection_id == CID


def test_every_command_maps_to_its_rest_route() -> None:
    conn = f"/v1/connections/{CID}"
    cases = [
        ("connect", "connect", {"url": "wss://x.example/a"}, "POST", "/v1/connect"),
        ("sendraw", "sendraw", {"id": CID, "message": "m"}, "POST", f"{conn}/sendraw"),
        ("disconnect", "disconnect", {"id": CID}, "DELETE", conn),
        ("publish", "publish.start", {"id": CID, "topic": "t"}, "POST", f"{conn}/publish"),
        ("publish", "publish.stop", {"id": CID}, "DELETE", f"{conn}/publish"),
        ("tags", "tags.set", {"id": CID, "key": "a/b", "value": "v"}, "POST", f"{conn}/tags/a%2Fb"),
        ("tags", "tags.set", {"id": CID, "tags": {"a": "1"}}, "PUT", f"{conn}/tags"),
        ("tags", "tags.get", {"id": CID}, "GET", f"{conn}/tags"),
        ("list", "list", {"tags": {"env": "prod"}}, "GET", "/v1/connections"),
        ("list", "get", {"id": CID}, "GET", conn),
    ]  # fmt: skip
    for function, kind, data, method, path in cases:
        call = call_of(function, event(kind, data))
        assert (call.method, call.path) == (method, path), kind
    listed = call_of("list", event("list", {"tags": {"env": "prod"}}))
    assert listed.query == (("env", "prod"),)


def test_plain_json_methods_pick_the_command() -> None:
    assert decode("publish", plain("POST", {"id": CID, "topic": "t"})).command.name == (
        "publish.start"
    )
    assert decode("publish", plain("DELETE", {"id": CID})).command.name == "publish.stop"
    assert decode("list", plain("GET")).command.name == "list"
    assert decode("list", plain("GET", query=(("id", CID),))).command.name == "get"
    filtered = decode("list", plain("GET", query=(("env", "prod"),)))
    assert filtered.command.build(filtered.data).query == (("env", "prod"),)
    plain_send = decode("send", plain("POST", {"id": CID, "message": "x"}))
    assert plain_send.mode is Mode.JSON and plain_send.identity is None


def test_plain_json_opts_into_dedupe_with_idempotency_key() -> None:
    incoming = Incoming.of(
        "POST",
        {"content-type": "application/json", "idempotency-key": "k1", "x-correlation-id": "c-9"},
        json.dumps({"url": "ws://a.example"}).encode(),
    )
    inv = decode("connect", incoming)
    assert inv.identity == ("http:connect", "k1")
    assert inv.correlation_id == "c-9"


def test_reclaim_accepts_the_pingsource_event_whatever_its_data() -> None:
    ce = CloudEvent({"type": PING_TYPE, "source": "/apis/v1/ping", "id": "p1"}, {"any": "thing"})
    headers, body = to_binary(ce)
    assert decode("reclaim", Incoming.of("POST", dict(headers), body)).command.name == "reclaim"


@pytest.mark.parametrize(
    ("function", "incoming", "needle"),
    [
        ("send", event("connect", {"url": "ws://a.example"}), "not handled by the send function"),
        ("send", event("nonsense", {}), "not handled"),
        ("send", event("send", {"message": "x"}), "id: Field required"),
        ("send", event("send", {"id": CID, "message": "x", "extra": 1}), "extra"),
        ("send", event("send", {"id": CID, "message": 5}), "message"),
        ("send", event("send", {"id": CID, "message": "x", "timeout_ms": 0}), "timeout_ms"),
        ("connect", event("connect", {"url": "http://a.example"}), "url"),
        ("connect", event("connect", {"url": "ws://a", "tags": {"": "x"}}), "tags"),
        ("publish", event("publish.start", {"id": CID, "topic": "a b"}), "topic"),
        ("tags", event("tags.set", {"id": CID, "key": "k"}), "key and value"),
        ("send", event("send", [1, 2]), "JSON object"),
        ("send", event("send", {"id": "a b", "message": "x"}), "id"),
    ],
)
def test_bad_commands_are_refused_naming_the_problem(
    function: str, incoming: Incoming, needle: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode(function, incoming)
    assert caught.value.http_status == 400
    assert needle in caught.value.message


def test_malformed_events_are_invalid_events() -> None:
    headers = {"ce-specversion": "1.0", "ce-type": COMMAND_PREFIX + "send", "ce-source": "/s"}
    with pytest.raises(InvalidEvent, match="ce-id"):
        decode("send", Incoming.of("POST", headers, b"{}"))
    structured = {"content-type": "application/cloudevents+json"}
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        decode("send", Incoming.of("POST", structured, b"{nope"))
    with pytest.raises(InvalidEvent, match="source"):
        body = json.dumps({"specversion": "1.0", "type": "t", "id": "1"}).encode()
        decode("send", Incoming.of("POST", structured, body))
    with pytest.raises(InvalidEvent, match="batch"):
        ctype = {"content-type": "application/cloudevents-batch+json"}
        decode("send", Incoming.of("POST", ctype, b"[]"))
    with pytest.raises(InvalidEvent, match="specversion"):
        bad = {**headers, "ce-id": "1", "ce-specversion": "9.9"}
        decode("send", Incoming.of("POST", bad, b"{}"))
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        ok = {**headers, "ce-id": "1", "content-type": "application/json"}
        decode("send", Incoming.of("POST", ok, b"{broken"))
    with pytest.raises(InvalidEvent, match="datacontenttype 'text/plain'"):
        text = {**headers, "ce-id": "1", "content-type": "text/plain"}
        decode("send", Incoming.of("POST", text, b"hello"))


def test_plain_json_refusals() -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        decode("send", plain("GET"))
    assert caught.value.http_status == 405
    with pytest.raises(InvalidArgument, match="twice"):
        raw = b'{"id": "a", "id": "b", "message": "x"}'
        decode("send", Incoming.of("POST", {"content-type": "application/json"}, raw))
    with pytest.raises(InvalidArgument, match="Content-Type"):
        decode("send", Incoming.of("POST", {"content-type": "text/plain"}, b"x"))
    with pytest.raises(InvalidArgument, match="NaN"):
        raw = b'{"id": "a", "message": "x", "timeout_ms": NaN}'
        decode("send", Incoming.of("POST", {"content-type": "application/json"}, raw))


def test_fingerprint_tells_data_apart() -> None:
    a = decode("send", event("send", {"id": CID, "message": "a"}))
    b = decode("send", event("send", {"id": CID, "message": "b"}))
    again = decode("send", event("send", {"id": CID, "message": "a"}, mode="structured"))
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == again.fingerprint


def test_correlation_id_rules() -> None:
    assert correlation_of("ev-1", {"x-correlation-id": "other"}) == "ev-1"
    assert correlation_of(None, {"x-correlation-id": "c-1"}) == "c-1"
    hashed = correlation_of("id with spaces", {})
    assert len(hashed) == 32 and hashed == correlation_of("id with spaces", {})
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert correlation_of(None, {"traceparent": trace}) == "0af7651916cd43dd8448eb211c80319c"


def test_function_table_names_the_folders() -> None:
    assert set(FUNCTIONS) == {
        "connect", "send", "sendraw", "disconnect", "publish", "tags", "list", "reclaim"
    }  # fmt: skip
