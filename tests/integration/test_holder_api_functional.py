"""The holder's REST API end to end: a real app on loopback, real WebSocket servers, real
stores. Connections, sends, publishing, tail and tags, on every store backend.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.holder_support import (
    TOKEN,
    Env,
    holder_env,
    holder_settings,
    running_holder,
    stored,
    ws_servers,
)
from wsmanager.adapters.inproc import InProcessPublisher
from wsmanager.adapters.sqlite import SqliteStateStore
from wsmanager.core import keys
from wsmanager.holder.app import create_app


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with holder_env(tmp_path) as running:
        yield running


# -- connections ---------------------------------------------------------------------------


async def test_connect_get_list_disconnect(env: Env) -> None:
    cid = await env.connect(tags={"env": "prod", "team": "fx"}, auto_reconnect=True)
    assert keys.connection_key(cid) in (await stored(env.store))["records"]

    status, record = await env.call("GET", f"/v1/connections/{cid}")
    assert status == 200
    assert record["id"] == cid and record["status"] == "CONNECTED"
    assert record["instance_id"] == "holder-a" and record["topic"] == ""
    assert record["tags"] == {"env": "prod", "team": "fx"} and record["auto_reconnect"] is True
    assert record["created_at"].endswith("Z") and record["fencing_token"] >= 1

    status, listed = await env.call("GET", "/v1/connections")
    assert status == 200 and [c["id"] for c in listed["connections"]] == [cid]

    status, answer = await env.call("DELETE", f"/v1/connections/{cid}")
    assert (status, answer) == (200, {})
    assert (await stored(env.store))["records"] == {}
    status, answer = await env.call("GET", f"/v1/connections/{cid}")
    assert status == 404 and answer["error"]["code"] == "NOT_FOUND"


async def test_list_filters_by_tags_with_and(env: Env) -> None:
    a = await env.connect(tags={"env": "prod", "team": "fx"})
    b = await env.connect(tags={"env": "prod", "team": "rates"})
    await env.connect(tags={"env": "dev"})

    async def ids(query: str) -> set[str]:
        status, answer = await env.call("GET", "/v1/connections" + query)
        assert status == 200, answer
        return {c["id"] for c in answer["connections"]}

    assert await ids("?env=prod") == {a, b}
    assert await ids("?env=prod&team=fx") == {a}
    assert await ids("?env=prod&team=none") == set()
    assert len(await ids("")) == 3
    status, answer = await env.call("GET", "/v1/connections?env=prod&env=dev")
    assert status == 400 and answer["error"]["code"] == "INVALID_ARGUMENT"


async def test_credentials_never_come_back(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    port = env.servers.base.rsplit(":", 1)[1]
    url = f"ws://trader:hunter2@127.0.0.1:{port}/echo?token=s3cret&venue=x"
    status, answer = await env.call("POST", "/v1/connect", {"url": url})
    assert status == 200, answer
    cid = answer["connection_id"]
    _, record = await env.call("GET", f"/v1/connections/{cid}")
    _, listed = await env.call("GET", "/v1/connections")
    await env.call("DELETE", f"/v1/connections/{cid}")
    shown = json.dumps([record, listed]) + "\n".join(env.audit_lines) + caplog.text
    assert "hunter2" not in shown and "s3cret" not in shown and "trader" not in shown
    assert record["url"] == f"ws://127.0.0.1:{port}/echo?token=***&venue=x"


# -- send, sendraw, publish ----------------------------------------------------------------


async def test_send_text_and_binary(env: Env) -> None:
    cid = await env.connect()
    status, answer = await env.call("POST", f"/v1/connections/{cid}/send", {"message": "ping ü"})
    assert (status, answer) == (200, {"response": "ping ü", "content_type": "text/plain"})

    payload = bytes(range(256))
    body = {"message": base64.b64encode(payload).decode(), "content_type": "application/x-raw"}
    status, answer = await env.call("POST", f"/v1/connections/{cid}/send", body)
    assert status == 200, answer
    assert base64.b64decode(answer["response"]) == payload
    # The binary frame the server saw carried the 16-byte UUID prefix, then the payload.
    assert isinstance(env.servers.received[-1], bytes)
    assert env.servers.received[-1][16:] == payload


async def test_send_times_out(env: Env) -> None:
    cid = await env.connect("/silent")
    body = {"message": "anyone?", "timeout_ms": 50}
    status, answer = await env.call("POST", f"/v1/connections/{cid}/send", body)
    assert status == 504 and answer["error"]["code"] == "DEADLINE_EXCEEDED"


async def test_sendraw_writes_the_frame_as_is(env: Env) -> None:
    cid = await env.connect("/silent")
    status, answer = await env.call("POST", f"/v1/connections/{cid}/sendraw", {"message": "raw"})
    assert (status, answer) == (200, {})
    await asyncio.wait_for(env.servers.wait_frames(1), 10)
    assert env.servers.received == ["raw"]


async def test_publish_and_stop(env: Env) -> None:
    cid = await env.connect("/push")
    async with env.publisher.subscribe("feed.prices") as events:
        status, record = await env.call(
            "POST", f"/v1/connections/{cid}/publish", {"topic": "feed.prices"}
        )
        assert status == 200 and record["topic"] == "feed.prices"
        await env.call("POST", f"/v1/connections/{cid}/sendraw", {"message": "tick"})
        event = await asyncio.wait_for(anext(events), 10)
    assert event.data == b"pushed:tick"
    assert event.attributes["websocketid"] == cid
    status, record = await env.call("DELETE", f"/v1/connections/{cid}/publish")
    assert status == 200 and record["topic"] == ""
    _, record = await env.call("GET", f"/v1/connections/{cid}")
    assert record["topic"] == ""


async def test_tail_streams_ndjson(env: Env) -> None:
    cid = await env.connect("/push")
    await env.call("POST", f"/v1/connections/{cid}/publish", {"topic": "t1"})
    client = env.holder.client
    async with client.get("/v1/topics/t1/events?limit=1", headers=env.holder.auth) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        first = json.loads(await response.content.readline())
        assert first == {"type": "subscribed", "topic": "t1"}
        await env.call("POST", f"/v1/connections/{cid}/sendraw", {"message": "hello"})
        line = json.loads(await asyncio.wait_for(response.content.readline(), 10))
        assert await response.content.read() == b""  # limit reached: the stream ends
    assert line["type"] == "message" and line["data"] == "pushed:hello"
    assert line["encoding"] == "utf-8" and line["attributes"]["websocketid"] == cid


async def test_tail_needs_an_in_process_publisher(tmp_path: Path, redis_url: str) -> None:
    from redis.asyncio import Redis

    from wsmanager.adapters.redis_streams import RedisStreamPublisher

    store = await SqliteStateStore.open(tmp_path / "s.db")
    client = Redis.from_url(redis_url)
    publisher = RedisStreamPublisher(client, key_prefix="wsm-test-tail:")
    app = create_app(holder_settings(), token=TOKEN, store=store, publisher=publisher)
    try:
        async with running_holder(app) as holder:
            status, answer = await holder.call("GET", "/v1/topics/t1/events")
    finally:
        await publisher.close()
        await client.aclose()
        await store.close()
    assert status == 409 and answer["error"]["code"] == "FAILED_PRECONDITION"


# -- tags ----------------------------------------------------------------------------------


async def test_tags(env: Env) -> None:
    cid = await env.connect(tags={"a": "1"})
    base = f"/v1/connections/{cid}/tags"
    assert await env.call("GET", base + "/a") == (200, {"key": "a", "value": "1"})
    assert await env.call("GET", base + "/missing") == (200, {"key": "missing", "value": None})
    assert await env.call("POST", base + "/b", {"value": "2"}) == (200, {"key": "b", "value": "2"})
    assert await env.call("GET", base) == (200, {"tags": {"a": "1", "b": "2"}})
    assert await env.call("PUT", base, {"tags": {"c": "3"}}) == (200, {"tags": {"c": "3"}})
    assert await env.call("GET", base) == (200, {"tags": {"c": "3"}})
    _, listed = await env.call("GET", "/v1/connections?c=3")
    assert [c["id"] for c in listed["connections"]] == [cid]
    status, answer = await env.call("GET", "/v1/connections/nope/tags")
    assert status == 404 and answer["error"]["code"] == "NOT_FOUND"


async def test_holder_on_every_store_backend(backend: Any) -> None:
    """The same API on memory, SQLite and real Redis stores (tests/integration/conftest.py)."""
    store = await backend.open()
    publisher = InProcessPublisher()
    app = create_app(holder_settings(), token=TOKEN, store=store, publisher=publisher)
    try:
        async with ws_servers() as servers, running_holder(app) as holder:
            status, answer = await holder.call(
                "POST", "/v1/connect", {"url": servers.url(), "tags": {"b": backend.name}}
            )
            assert status == 200, answer
            cid = answer["connection_id"]
            assert await store.get(keys.connection_key(cid)) is not None
            _, listed = await holder.call("GET", f"/v1/connections?b={backend.name}")
            assert [c["id"] for c in listed["connections"]] == [cid]
            status, reply = await holder.call(
                "POST", f"/v1/connections/{cid}/send", {"message": "hi"}
            )
            assert (status, reply["response"]) == (200, "hi")
            assert (await holder.call("DELETE", f"/v1/connections/{cid}"))[0] == 200
            assert await store.get(keys.connection_key(cid)) is None
    finally:
        await publisher.close()


async def test_send_through_a_third_party_server(env: Env) -> None:
    """The npm ``ws`` server (strict RFC 6455, written by nobody here) behind the REST API."""
    from tests.support.ws_servers import NodeWsServer, ensure_node_ws

    reason = ensure_node_ws()
    if reason is not None:
        pytest.skip(reason)
    async with NodeWsServer() as node:
        status, answer = await env.call("POST", "/v1/connect", {"url": node.url()})
        assert status == 200, answer
        base = f"/v1/connections/{answer['connection_id']}"
        status, reply = await env.call("POST", f"{base}/send", {"message": "strict ü"})
        assert (status, reply["response"]) == (200, "strict ü")
        payload = base64.b64encode(b"\x00\xff binary").decode()
        body = {"message": payload, "content_type": "application/octet-stream"}
        status, reply = await env.call("POST", f"{base}/send", body)
        assert (status, reply["response"]) == (200, payload)
        assert (await env.call("DELETE", base))[0] == 200


async def test_server_refusing_the_handshake_is_a_4xx(env: Env) -> None:
    from tests.support.ws_servers import WsServer

    async with WsServer() as server:
        status, answer = await env.call("POST", "/v1/connect", {"url": server.url("/reject")})
    assert 400 <= status < 500 and answer["error"]["code"] == "INVALID_ARGUMENT", answer
    assert (await stored(env.store))["records"] == {}
