"""The holder's edge: bearer-token auth, CORS, correlation ids and audit records, the open
operational routes (/health, /ready, /metrics, /openapi.json).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

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
from wsmanager.holder.app import create_app
from wsmanager.holder.audit import AuditLog


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with holder_env(tmp_path) as running:
        yield running


# -- correlation ids and audit ----------------------------------------------------------------


async def test_correlation_ids_are_echoed_and_audited(env: Env) -> None:
    cid = await env.connect()
    async with env.holder.client.post(
        f"/v1/connections/{cid}/send",
        json={"message": "x"},
        headers={**env.holder.auth, "X-Correlation-Id": "order-42"},
    ) as response:
        assert response.headers["X-Correlation-Id"] == "order-42"
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with env.holder.client.post(
        f"/v1/connections/{cid}/publish",
        json={"topic": "t"},
        headers={**env.holder.auth, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    ) as response:
        assert response.headers["X-Correlation-Id"] == trace
    async with env.holder.client.delete(f"/v1/connections/{cid}/publish", headers=env.holder.auth):
        pass
    async with env.holder.client.delete(f"/v1/connections/{cid}", headers=env.holder.auth) as r:
        generated = r.headers["X-Correlation-Id"]
    assert len(generated) == 32

    assert [r["correlation_id"] for r in env.audit("send")] == ["order-42"]
    assert [r["correlation_id"] for r in env.audit("start_publish")] == [trace]
    assert [r["correlation_id"] for r in env.audit("disconnect")] == [generated]
    for action in ("connect", "send", "start_publish", "stop_publish", "disconnect"):
        [record] = env.audit(action)
        assert record["instance_id"] == "holder-a" and record["connection_id"] == cid, action


async def test_failing_audit_sink_never_fails_a_request(tmp_path: Path) -> None:
    def broken(line: str) -> None:
        raise OSError("log pipe closed")

    store = await SqliteStateStore.open(tmp_path / "s.db")
    publisher = InProcessPublisher()
    audit = AuditLog(broken)
    app = create_app(holder_settings(), token=TOKEN, store=store, publisher=publisher, audit=audit)
    try:
        async with ws_servers() as servers, running_holder(app) as holder:
            status, answer = await holder.call("POST", "/v1/connect", {"url": servers.url()})
            assert status == 200, answer
            cid = answer["connection_id"]
            assert (await holder.call("POST", f"/v1/connections/{cid}/send", {"message": "x"}))[
                0
            ] == 200
            assert (await holder.call("DELETE", f"/v1/connections/{cid}"))[0] == 200
    finally:
        await publisher.close()
        await store.close()
    assert audit.failures >= 3


# -- auth and CORS -----------------------------------------------------------------------------


async def test_v1_needs_the_token(env: Env) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, answer = await env.call("GET", "/v1/connections", headers=headers, auth=False)
        assert status == 401 and answer["error"]["code"] == "UNAUTHENTICATED", headers
        status, _ = await env.call("POST", "/v1/connect", {"url": env.servers.url()}, auth=False)
        assert status == 401
    assert (await stored(env.store))["records"] == {}
    status, _ = await env.call("GET", "/v1/nowhere", auth=False)
    assert status == 401  # unknown paths are closed too: nothing is open by accident
    async with env.holder.client.get("/v1/connections") as response:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    status, _ = await env.call(
        "GET", "/v1/connections", headers={"Authorization": f"bearer {TOKEN}"}, auth=False
    )
    assert status == 200


async def test_open_routes(env: Env) -> None:
    status, health = await env.call("GET", "/health", auth=False)
    assert status == 200 and health["status"] == "ok" and health["instance_id"] == "holder-a"
    status, ready = await env.call("GET", "/ready", auth=False)
    assert (status, ready["status"]) == (200, "ready")
    await env.call("GET", "/v1/connections")
    status, text = await env.call("GET", "/metrics", auth=False)
    assert status == 200 and "wsm_http_requests_total" in text and "wsm_ready 1.0" in text
    assert 'route="/v1/connections",status="200"' in text


async def test_openapi_describes_every_route(env: Env) -> None:
    status, doc = await env.call("GET", "/openapi.json", auth=False)
    assert status == 200 and doc["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (route.method, route.resource.canonical)
        for route in env.holder.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert described == served
    connect = doc["paths"]["/v1/connect"]["post"]
    schema_ref = connect["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False and "url" in schema["required"]
    assert "401" in connect["responses"] and "413" in connect["responses"]
    assert doc["paths"]["/health"]["get"]["security"] == []


async def test_cors_denies_by_default(env: Env) -> None:
    origin = {"Origin": "https://evil.example"}
    status, answer = await env.call("GET", "/v1/connections", headers=origin)
    assert status == 403 and answer["error"]["code"] == "PERMISSION_DENIED"
    async with env.holder.client.options(
        "/v1/connect", headers={**origin, "Access-Control-Request-Method": "POST"}
    ) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    status, _ = await env.call("POST", "/v1/connect", {"url": env.servers.url()}, headers=origin)
    assert status == 403
    assert (await stored(env.store))["records"] == {}


async def test_cors_allows_configured_origins(tmp_path: Path) -> None:
    settings = holder_settings(**{"Cors__AllowedOrigins": "https://ui.example"})
    store = await SqliteStateStore.open(tmp_path / "s.db")
    publisher = InProcessPublisher()
    app = create_app(settings, token=TOKEN, store=store, publisher=publisher)
    origin = {"Origin": "https://ui.example"}
    try:
        async with running_holder(app) as holder:
            preflight = {
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-evil",
            }
            async with holder.client.options("/v1/connect", headers=preflight) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example"
                assert response.headers["Access-Control-Allow-Methods"] == "POST"
                allowed = response.headers["Access-Control-Allow-Headers"]
                assert allowed == "authorization, content-type"
            async with holder.client.get(
                "/v1/connections", headers={**origin, **holder.auth}
            ) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example"
                assert "X-Correlation-Id" in response.headers["Access-Control-Expose-Headers"]
            status, _ = await holder.call(
                "GET", "/v1/connections", headers={"Origin": "https://other.example"}
            )
            assert status == 403
            bad = {**origin, "Access-Control-Request-Method": "PATCH"}
            async with holder.client.options("/v1/connect", headers=bad) as response:
                assert response.status == 405
    finally:
        await publisher.close()
        await store.close()


# -- readiness and other stores ----------------------------------------------------------------


async def test_ready_fails_when_the_store_fails(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path / "s.db")
    publisher = InProcessPublisher()
    app = create_app(holder_settings(), token=TOKEN, store=store, publisher=publisher)
    try:
        async with running_holder(app) as holder:
            assert (await holder.call("GET", "/ready", auth=False))[0] == 200
            await store.close()  # the store now refuses every call
            status, answer = await holder.call("GET", "/ready", auth=False)
            assert status == 503 and answer["error"]["code"] == "UNAVAILABLE"
            assert answer["checks"]["store"].startswith("unavailable")
            assert (await holder.call("GET", "/health", auth=False))[0] == 200
    finally:
        await publisher.close()


def test_holder_refuses_to_run_without_a_token() -> None:
    from wsmanager.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        create_app(holder_settings())
    assert info.value.key == "WSM_INTERNAL_TOKEN"
    assert isinstance(create_app(holder_settings(WSM_INTERNAL_TOKEN="t")), web.Application)


async def test_ready_fails_when_the_lease_lapsed(tmp_path: Path) -> None:
    from wsmanager.clock import ManualClock

    clock = ManualClock()
    store = await SqliteStateStore.open(tmp_path / "s.db")
    publisher = InProcessPublisher()
    app = create_app(holder_settings(), token=TOKEN, store=store, publisher=publisher, clock=clock)
    try:
        async with ws_servers() as servers, running_holder(app) as holder:
            assert (await holder.call("GET", "/ready", auth=False))[0] == 200
            _, answer = await holder.call("POST", "/v1/connect", {"url": servers.url()})
            cid = answer["connection_id"]
            clock.advance(3600)  # a paused process wakes up long after its last heartbeat (R8)
            status, answer = await holder.call("GET", "/ready", auth=False)
            assert status == 503 and answer["checks"]["lease"] == "fenced"
            status, answer = await holder.call(
                "POST", f"/v1/connections/{cid}/sendraw", {"message": "late"}
            )
            assert status == 409 and answer["error"]["code"] == "FAILED_PRECONDITION"
            assert servers.received == []  # a fenced holder sends nothing (R8)
    finally:
        await publisher.close()
        await store.close()
