"""The functions in a cluster: routing among holders, a killed owner, the reclaim function, an
unavailable store, no live holder, and the documented ``functions-framework --asgi`` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.functions.conftest import Cluster
from tests.functions.harness import (
    FUNCTIONS_DIR,
    TOKEN,
    EchoServer,
    FunctionServer,
    HolderProcess,
    Response,
    base_environ,
    command_event,
    free_port,
    until,
)
from wsmanager.adapters.redis import RedisStateStore
from wsmanager.config import Settings
from wsmanager.core import keys
from wsmanager.core.model import ConnectionRecord, Heartbeat
from wsmanager.core.ownership import is_reclaimable
from wsmanager.functions import Incoming, Runtime, create_app, handle, install
from wsmanager.functions.commands import ERROR_TYPE, PING_TYPE, RESULT_PREFIX
from wsmanager.functions.runtime import close_deps

__all__: list[str] = []


async def connect(functions: FunctionServer, url: str, **extra: object) -> str:
    resp = await functions.event("connect", "connect", {"url": url, **extra})
    assert resp.status == 200, resp
    return str(resp.event().data["connection_id"])


async def send(functions: FunctionServer, cid: str, message: str) -> Response:
    return await functions.event("send", "send", {"id": cid, "message": message})


async def test_commands_reach_the_owner_among_two_holders(cluster: Cluster) -> None:
    a, b = cluster.holders
    # Least loaded wins, counting connects routed since the last heartbeat: two connects made
    # back to back land on different holders even before either heartbeat shows the first.
    first = await connect(cluster.functions, cluster.echo.url)
    second = await connect(cluster.functions, cluster.echo.url)
    assert {len(a.held()), len(b.held())} == {1}
    for cid in (first, second):
        owner = next(h for h in cluster.holders if cid in h.held())
        stored = await cluster.runtime.ownership.require(cid)
        assert stored.record.owner is not None
        assert stored.record.owner.instance_id == owner.name
        for n in range(3):
            resp = await send(cluster.functions, cid, f"{cid}-{n}")
            assert resp.status == 200, resp
            assert resp.event().data["response"] == f"{cid}-{n}"
    # Owner endpoints are cached by (connection id, fencing token): one entry per connection.
    assert len(cluster.runtime.router._routes) == 2


async def test_reclaim_function_takes_a_dead_holders_connections(cluster: Cluster) -> None:
    a, b = cluster.holders
    cids = [await connect(cluster.functions, cluster.echo.url, auto_reconnect=True) for _ in "ab"]
    victim = next(h for h in cluster.holders if h.held())
    taken = victim.held()
    await victim.stop()  # no drain: its records stay owned by it, as after a crash
    await wait_reclaimable(cluster.store, cluster.runtime.settings, taken)
    survivor = b if victim is a else a
    headers, body = command_event("", {"tick": 1}, event_type=PING_TYPE, source="/apis/v1/ping")
    # Two sweeps at once (a PingSource tick and a manual call): CAS lets exactly one take each.
    ping, manual = await asyncio.gather(
        cluster.functions.call("reclaim", body=body, headers=headers),
        cluster.functions.call("reclaim", json_body={}),
    )
    assert ping.status == manual.status == 200, (ping, manual)
    event = ping.event()
    assert event["type"] == RESULT_PREFIX + "reclaim"
    by_ping, by_manual = set(event.data["taken"]), set(manual.json()["taken"])
    assert by_ping | by_manual == taken and not by_ping & by_manual
    assert event.data["new_owner"] == survivor.name
    assert event.data["dead_instances"] == [victim.name]
    for cid in cids:
        record = (await cluster.runtime.ownership.require(cid)).record
        assert record.owner is not None and record.owner.instance_id == survivor.name
    # A second sweep finds nothing: concurrent and repeated sweeps are safe (CAS, R7).
    again = await cluster.functions.call("reclaim", json_body={})
    assert again.status == 200 and again.json()["taken"] == []


async def wait_reclaimable(store: RedisStateStore, settings: Settings, ids: set[str]) -> None:
    """Until the dead owner's heartbeat is stale and its records unrenewed long enough (R6)."""
    policy = settings.liveness_policy()

    async def ready() -> bool:
        now = time.time()
        for cid in ids:
            raw = await store.get(keys.connection_key(cid))
            assert raw is not None
            record = ConnectionRecord.from_json(raw.value)
            assert record.owner is not None
            beat_raw = await store.get(keys.heartbeat_key(record.owner.instance_id))
            beat = Heartbeat.from_json(beat_raw.value) if beat_raw else None
            if not is_reclaimable(record, beat, now, policy):
                return False
        return True

    await until(ready, "the dead holder's connections to become reclaimable")


@pytest.fixture
async def processes(redis_url: str) -> AsyncIterator[tuple[dict[str, str], RedisStateStore]]:
    prefix = f"wsm-test-{uuid.uuid4().hex}:"
    store = RedisStateStore(redis_url, key_prefix=prefix)
    try:
        yield base_environ(redis_url, prefix), store
    finally:
        await store.drop_namespace()
        await store.close()


async def test_a_command_for_a_dead_owner_reclaims_it_first(cluster: Cluster) -> None:
    cid = await connect(cluster.functions, cluster.echo.url, auto_reconnect=True)
    victim = next(h for h in cluster.holders if cid in h.held())
    survivor = next(h for h in cluster.holders if h is not victim)
    await victim.stop()  # no drain: the record stays owned by the stopped holder
    await wait_reclaimable(cluster.store, cluster.runtime.settings, {cid})
    resp = await send(cluster.functions, cid, "after")
    record = (await cluster.runtime.ownership.require(cid)).record
    assert record.owner is not None and record.owner.instance_id == survivor.name
    assert record.fencing_token == 2
    sweeps = [json.loads(line) for line in cluster.audit if '"reclaim_sweep"' in line]
    assert [s["taken"] for s in sweeps] == [[cid]]
    assert sweeps[0]["new_owner"] == survivor.name and sweeps[0]["correlation_id"]
    # The survivor answered: 200 once it has adopted the socket; until the holder serves
    # POST /internal/v1/adopt the adoption is "deferred" and the socket is not open yet, which
    # is a retryable 409 (Knative redelivers it), never a poison 4xx.
    if sweeps[0]["adopt"] == "adopted":
        assert resp.status == 200, resp
    else:
        assert sweeps[0]["adopt"] == "deferred"
        assert resp.status == 409 and resp.event().data["error"]["code"] == "FAILED_PRECONDITION"


async def test_owner_killed_between_two_sends(
    processes: tuple[dict[str, str], RedisStateStore],
) -> None:
    environ, store = processes
    echo = await EchoServer().start()
    runtime = await Runtime.open(Settings.load(environ=environ), token=TOKEN)
    install(runtime)
    functions = await FunctionServer().start()
    a = await HolderProcess("proc-a", environ).start()
    b: HolderProcess | None = None
    try:
        cid = await connect(functions, echo.url, auto_reconnect=True)
        first = await send(functions, cid, "before")
        assert first.status == 200 and first.event().data["response"] == "before"
        b = await HolderProcess("proc-b", environ).start()
        a.kill()  # SIGKILL: no drain, no goodbye; its heartbeat simply stops (R4)
        await wait_reclaimable(store, runtime.settings, {cid})
        second = await send(functions, cid, "after")
        assert second.status == 200, second
        assert second.event().data["response"] == "after"
        record = (await runtime.ownership.require(cid)).record
        assert record.owner is not None and record.owner.instance_id == "proc-b"
        assert record.fencing_token == 2
    finally:
        a.kill()
        if b is not None:
            await b.stop()
        await functions.stop()
        await close_deps()
        await echo.stop()


async def test_store_unavailable_is_retryable(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    environ = base_environ(dead, "wsm-test-dead:")
    settings = Settings.load(environ=environ)
    store = RedisStateStore(dead, socket_timeout=1.0)
    runtime = await Runtime.open(settings, store=store, token=TOKEN)
    try:
        headers, body = command_event("send", {"id": str(uuid.uuid4()), "message": "x"})
        reply = await handle("send", Incoming.of("POST", headers, body), runtime=runtime)
        assert reply.status == 503
        assert reply.header("ce-type") == ERROR_TYPE
        assert json.loads(reply.body)["error"]["code"] == "UNAVAILABLE"
        plain = Incoming.of("GET", {}, b"")
        listed = await handle("list", plain, runtime=runtime)
        assert listed.status == 503
    finally:
        await runtime.aclose()
        await store.close()


async def test_no_live_holder_is_retryable(cluster: Cluster) -> None:
    for holder in cluster.holders:
        await holder.stop()
    policy = cluster.runtime.settings.liveness_policy()

    async def all_stale() -> bool:
        return not await cluster.runtime.ownership.live_peers()

    await until(all_stale, f"heartbeats older than {policy.stale_threshold} s")
    resp = await cluster.functions.event("connect", "connect", {"url": cluster.echo.url})
    assert resp.status == 503
    assert "no live holder" in resp.event().data["error"]["message"]


async def test_functions_app_mounts_every_function(cluster: Cluster) -> None:
    """The aiohttp-free ASGI app ``wsm serve`` can mount (no functions-framework involved)."""
    app = create_app(cluster.runtime, prefix="/functions")
    sent: list[dict[str, object]] = []
    headers, body = command_event("connect", {"url": cluster.echo.url})
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/functions/connect",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "query_string": b"",
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def record(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, record)  # type: ignore[arg-type]
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["status"] == "CONNECTED"  # type: ignore[arg-type]


async def test_functions_framework_cli_asgi(cluster: Cluster) -> None:
    """The documented command: ``functions-framework --target list --source … --asgi``, with
    its dependencies built by deps() from the environment at the first request."""
    cid = await connect(cluster.functions, cluster.echo.url)
    port = free_port()
    cli = Path(sys.executable).with_name("functions-framework")
    source = FUNCTIONS_DIR / "list" / "main.py"
    command = [str(cli), "--target", "list", "--source", str(source), "--asgi"]
    env = {**os.environ, **cluster.environ}
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/"

            async def up() -> bool:
                assert proc.poll() is None, "functions-framework exited"
                try:
                    async with session.get(url) as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(up, "functions-framework to answer")
            headers, body = command_event("get", {"id": cid})
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["ce-type"] == RESULT_PREFIX + "get"
                assert (await resp.json())["id"] == cid
    finally:
        proc.terminate()
        await asyncio.get_running_loop().run_in_executor(None, proc.wait)


async def test_a_cached_route_follows_an_owner_change_while_the_old_owner_lives(
    cluster: Cluster,
) -> None:
    """R3: the function caches (token, endpoint) per connection and calls without a store read.
    Once ownership moves (here: the owner releases, R11, and the peer adopts, R7) while the old
    owner is still up, the old owner refuses the stale token (412) and the function re-reads."""
    from wsmanager.core.model import ConnectionStatus
    from wsmanager.holder.routes_common import HOLDER
    from wsmanager.reclaim import sweep

    cid = await connect(cluster.functions, cluster.echo.url, auto_reconnect=True)
    assert (await send(cluster.functions, cid, "before")).event().data["response"] == "before"
    old = next(h for h in cluster.holders if cid in h.held())
    new = next(h for h in cluster.holders if h is not old)
    old_parts = old.app[HOLDER].components
    new_parts = new.app[HOLDER].components
    assert old_parts is not None and new_parts is not None
    await old_parts.ownership.release_all()
    report = await sweep(new_parts.ownership, released_only=True)
    assert cid in {r.id for r in report.taken}
    await new_parts.manager.adopt(report.taken[0])
    # The old owner's next lease tick learns the connection is lost and drops its socket (R8).
    renewal = await old_parts.ownership.renew_mine(held=old.held())
    assert renewal.lost == {cid}
    await old_parts.manager.apply_renewal(renewal)
    for _ in range(200):
        stored = await cluster.runtime.ownership.require(cid)
        if stored.record.status is ConnectionStatus.CONNECTED:
            break
        await asyncio.sleep(0.05)
    assert stored.record.owner == new_parts.ownership.me and stored.record.fencing_token == 3

    resp = await send(cluster.functions, cid, "after")
    assert resp.status == 200, resp
    assert resp.event().data["response"] == "after"
    assert cluster.runtime.router._routes[cid][0] == 3  # re-read at the new token
