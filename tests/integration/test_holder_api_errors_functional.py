"""Bad input gets a clear 4xx and changes nothing (brief §8); every error code of the API is
answered with its status; nothing a request does makes the holder leak internals.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.holder_support import (
    MAX_MESSAGE,
    Env,
    holder_env,
    stored,
)
from tests.support.redis_server import free_port
from wsmanager.core import keys
from wsmanager.holder.routes_common import HOLDER


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with holder_env(tmp_path) as running:
        yield running


# -- bad input changes nothing ---------------------------------------------------------------

BAD_BODIES: list[tuple[str, str, Any, int]] = [
    # (route suffix, method, raw body or JSON-able, expected status)
    ("connect", "POST", b"{not json", 400),
    ("connect", "POST", b"[1, 2]", 400),
    ("connect", "POST", b'{"url": "ws://127.0.0.1:1/", "url": "ws://127.0.0.1:2/"}', 400),
    ("connect", "POST", b'{"url": NaN}', 400),
    ("connect", "POST", b"", 400),
    ("connect", "POST", b'{"url": "ws://127.0.0.1:1/\xff"}', 400),  # not UTF-8
    ("connect", "POST", b"[" * 50_000, 400),  # nested too deeply
    ("connect", "POST", {"url": "ws://127.0.0.1:1/", "extra": 1}, 400),
    ("connect", "POST", {"url": "ws://127.0.0.1:1/", "auto_reconnect": "yes"}, 400),
    ("connect", "POST", {"url": 5}, 400),
    ("connect", "POST", {}, 400),
    ("connect", "POST", {"url": "http://127.0.0.1:1/"}, 400),
    ("connect", "POST", {"url": "ws://10.1.2.3/"}, 400),
    ("connect", "POST", {"url": "ws://169.254.169.254/"}, 400),
    ("connect", "POST", {"url": "ws://127.0.0.1:1/", "tags": {"k": 1}}, 400),
    ("connect", "POST", {"url": "ws://127.0.0.1:1/", "tags": {str(i): "" for i in range(51)}}, 400),
    ("connect", "POST", {"url": "ws://127.0.0.1:1/", "content_type": "nonsense"}, 400),
    ("send", "POST", {"message": "x", "timeout_ms": 0}, 400),
    ("send", "POST", {"message": "x", "timeout_ms": True}, 400),
    ("send", "POST", {"message": "!!", "content_type": "application/octet-stream"}, 400),
    ("send", "POST", {"message": "x" * (MAX_MESSAGE + 1)}, 413),
    ("send", "POST", {"message": "x" * (MAX_MESSAGE * 2 + 70_000)}, 413),
    ("send", "POST", {"msg": "x"}, 400),
    ("sendraw", "POST", {"message": "x", "timeout_ms": 5}, 400),
    ("publish", "POST", {"topic": ""}, 400),
    ("publish", "POST", {"topic": "has space"}, 400),
    ("publish", "POST", {"topic": ["t"]}, 400),
    ("tags/k", "POST", {"value": 3}, 400),
    ("tags/k", "POST", {"value": "v" * 1025}, 400),
    ("tags", "PUT", {"tags": {"": "x"}}, 400),
    ("tags", "PUT", {"a": "b"}, 400),
]


@pytest.mark.parametrize(("suffix", "method", "body", "expected"), BAD_BODIES)
async def test_bad_input_is_refused_and_changes_nothing(
    env: Env, suffix: str, method: str, body: Any, expected: int
) -> None:
    cid = await env.connect("/silent", tags={"keep": "me"})
    await env.call("POST", f"/v1/connections/{cid}/publish", {"topic": "kept"})
    before = await stored(env.store)
    path = "/v1/connect" if suffix == "connect" else f"/v1/connections/{cid}/{suffix}"
    if isinstance(body, bytes):
        status, answer = await env.call(method, path, raw=body)
    else:
        status, answer = await env.call(method, path, body)
    assert status == expected, answer
    assert answer["error"]["code"] == "INVALID_ARGUMENT" and answer["error"]["message"]
    assert await stored(env.store) == before
    assert env.servers.received == []  # nothing reached the remote server either


async def test_wrong_content_type_is_refused(env: Env) -> None:
    url = env.servers.url()
    status, answer = await env.call(
        "POST", "/v1/connect", raw=json.dumps({"url": url}), headers={"Content-Type": "text/plain"}
    )
    assert status == 400 and "application/json" in answer["error"]["message"]
    assert (await stored(env.store))["records"] == {}


async def test_unknown_connection_and_route_and_method(env: Env) -> None:
    cases: list[tuple[str, str, Any]] = [
        ("GET", "/v1/connections/missing", None),
        ("DELETE", "/v1/connections/missing", None),
        ("POST", "/v1/connections/missing/send", {"message": "x"}),
        ("POST", "/v1/connections/missing/sendraw", {"message": "x"}),
        ("POST", "/v1/connections/missing/publish", {"topic": "t"}),
        ("DELETE", "/v1/connections/missing/publish", None),
        ("GET", "/v1/connections/missing/tags/k", None),
        ("POST", "/v1/connections/missing/tags/k", {"value": "v"}),
        ("PUT", "/v1/connections/missing/tags", {"tags": {}}),
        ("GET", "/v1/nowhere", None),
        ("GET", "/v1/connections/" + "x" * 300, None),
    ]
    for method, path, body in cases:
        status, answer = await env.call(method, path, body)
        assert status == 404 and answer["error"]["code"] == "NOT_FOUND", (method, path, answer)
    status, answer = await env.call("PATCH", "/v1/connections")
    assert status == 405 and answer["error"]["code"] == "UNIMPLEMENTED"


async def test_not_connected_is_failed_precondition(env: Env) -> None:
    cid = await env.connect("/silent")
    for ws in env.servers.sockets:
        await ws.close()  # the remote end goes away; no auto-reconnect
    record: dict[str, Any] = {}
    for _ in range(1000):  # bounded wait for the receive loop to notice (no timing assertion)
        _, record = await env.call("GET", f"/v1/connections/{cid}")
        if record["status"] == "DISCONNECTED":
            break
        await asyncio.sleep(0.01)
    assert record["status"] == "DISCONNECTED"
    for path, body in (("sendraw", {"message": "x"}), ("send", {"message": "x"})):
        status, answer = await env.call("POST", f"/v1/connections/{cid}/{path}", body)
        assert status == 409 and answer["error"]["code"] == "FAILED_PRECONDITION", answer
    status, answer = await env.call("POST", f"/v1/connections/{cid}/publish", {"topic": "t"})
    assert status == 409 and answer["error"]["code"] == "FAILED_PRECONDITION"


async def test_unreachable_server_is_unavailable_and_leaves_no_record(env: Env) -> None:
    port = free_port()  # nobody listens there
    status, answer = await env.call("POST", "/v1/connect", {"url": f"ws://127.0.0.1:{port}/"})
    assert status == 503 and answer["error"]["code"] == "UNAVAILABLE"
    assert (await stored(env.store))["records"] == {}


async def test_another_owners_connection_is_412(env: Env) -> None:
    from wsmanager.clock import SystemClock
    from wsmanager.core.model import Owner
    from wsmanager.core.ownership import LivenessPolicy
    from wsmanager.ownership import OwnershipService

    other = OwnershipService(
        env.store, me=Owner("holder-b", "1"), policy=LivenessPolicy(), clock=SystemClock()
    )
    await other.create("owned-by-b", env.servers.url(), tags={"who": "b"})
    status, record = await env.call("GET", "/v1/connections/owned-by-b")
    assert status == 200 and record["instance_id"] == "holder-b"  # reads work cluster-wide
    for method, path, body in (
        ("POST", "send", {"message": "x", "content_type": "text/plain"}),
        ("POST", "sendraw", {"message": "x", "content_type": "text/plain"}),
        ("DELETE", "", None),
        ("POST", "publish", {"topic": "t"}),
        ("PUT", "tags", {"tags": {}}),
    ):
        url = "/v1/connections/owned-by-b" + (f"/{path}" if path else "")
        # A request forwarded here is never forwarded again (R3): NotOwner naming the owner.
        forwarded = {"X-Wsm-Forwarded": "holder-c"}
        status, answer = await env.call(method, url, body, headers=forwarded)
        assert status == 412, (method, path, answer)
        assert answer["error"]["code"] == "FAILED_PRECONDITION"
        assert answer["error"]["details"]["owner"] == "holder-b"
        # A direct one: holder-b has no heartbeat (dead), but its record was just renewed, so
        # it is not reclaimable yet (R6): retryable UNAVAILABLE, nothing changed.
        status, answer = await env.call(method, url, body)
        assert status == 503 and answer["error"]["code"] == "UNAVAILABLE", (method, answer)
        assert answer["error"]["details"]["owner"] == "holder-b"
    assert keys.connection_key("owned-by-b") in (await stored(env.store))["records"]


async def test_unexpected_errors_are_internal_without_details(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    components = env.holder.app[HOLDER].components
    assert components is not None

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(components.manager, "list", broken)
    status, answer = await env.call("GET", "/v1/connections")
    assert status == 500
    assert answer == {"error": {"code": "INTERNAL", "message": "internal error"}}
    assert "secret internal detail" in caplog.text  # logged for operators, not returned
