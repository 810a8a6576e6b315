"""``wsm serve`` as a real subprocess, driven by the ``wsm`` client subcommands (brief §5).

The holder runs with its defaults (SQLite under ./.wsm, in-process pub/sub, loopback targets
allowed, a generated token in ./.wsm/token); the client commands find the token there, exactly
as a user in the same directory would. The WebSocket server is a real aiohttp echo server on
loopback, served by this test's event loop, so every ``wsm`` call runs as an asyncio subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.holder_support import WsServers, ws_servers
from tests.support.redis_server import free_port

WSM = [sys.executable, "-m", "wsmanager.cli"]
#: Generous bound for one CLI call (interpreter start-up included); not a timing assertion.
CALL_TIMEOUT = 60.0


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSM_")}
    env.pop("HOSTNAME", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def wsm(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *WSM,
        *args,
        cwd=cwd,
        env=env or clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), CALL_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def read_line_containing(stream: asyncio.StreamReader, text: str) -> str:
    while True:
        line = (await asyncio.wait_for(stream.readline(), CALL_TIMEOUT)).decode()
        if not line:
            raise AssertionError(f"stream ended before a line containing {text!r}")
        if text in line:
            return line


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, url: str, cwd: Path) -> None:
        self.proc, self.url, self.cwd = proc, url, cwd

    async def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        return await wsm(self.cwd, *args, "--url", self.url, env=env)


@pytest.fixture
async def echo() -> AsyncIterator[WsServers]:
    async with ws_servers() as servers:
        yield servers


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    port = free_port()
    # stderr (logs, audit lines) goes to a file: an unread pipe could fill up and stall it.
    log = (tmp_path / "serve.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *WSM, "serve", "--http-port", str(port),
        cwd=tmp_path, env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=log,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await read_line_containing(proc.stdout, "listening on")
        assert f"http://127.0.0.1:{port}" in line
        yield Served(proc, f"http://127.0.0.1:{port}", tmp_path)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), CALL_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def test_serve_and_drive_it_with_the_client_commands(served: Served, echo: WsServers) -> None:
    token_file = served.cwd / ".wsm" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (served.cwd / ".wsm" / "state.db").exists()

    code, out, err = await served.run("connect", echo.url("/echo"), "--tag", "env=e2e")
    assert code == 0, err
    cid = out.strip()

    code, out, err = await served.run("list", "env=e2e", "--json")
    assert code == 0, err
    [record] = json.loads(out)
    assert (record["id"], record["status"], record["tags"]) == (cid, "CONNECTED", {"env": "e2e"})
    code, out, _ = await served.run("list", "env=other", "--json")
    assert (code, json.loads(out)) == (0, [])

    code, out, err = await served.run("send", cid, "hello over REST")
    assert (code, out.strip()) == (0, "hello over REST"), err

    code, _, err = await served.run("publish", cid, "e2e.topic")
    assert code == 0, err
    tail = await asyncio.create_subprocess_exec(
        *WSM, "tail", "e2e.topic", "--count", "1", "--url", served.url,
        cwd=served.cwd, env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert tail.stderr is not None and tail.stdout is not None
    await read_line_containing(tail.stderr, "tailing e2e.topic")
    code, _, err = await served.run("send-raw", cid, "published frame")
    assert code == 0, err
    out_bytes = await asyncio.wait_for(tail.stdout.read(), CALL_TIMEOUT)
    assert await asyncio.wait_for(tail.wait(), CALL_TIMEOUT) == 0
    assert out_bytes.decode().strip() == "published frame"

    code, _, err = await served.run("unpublish", cid)
    assert code == 0, err
    code, out, _ = await served.run("list", "--json")
    assert json.loads(out)[0]["topic"] == ""

    code, _, err = await served.run("disconnect", cid)
    assert code == 0, err
    code, out, _ = await served.run("list", "--json")
    assert (code, json.loads(out)) == (0, [])


async def test_credentials_stay_out_of_output_and_logs(served: Served, echo: WsServers) -> None:
    secret_url = echo.url("/echo").replace("ws://", "ws://trader:hunter2@") + "?token=s3cret"
    code, out, err = await served.run("connect", secret_url)
    assert code == 0, err
    cid = out.strip()
    code, out, _ = await served.run("list", "--json")
    [record] = json.loads(out)
    assert record["url"] == echo.url("/echo") + "?token=***"
    code, _, err = await served.run("disconnect", cid)
    assert code == 0, err
    log = (served.cwd / "serve.log").read_text()
    audit = [json.loads(line) for line in log.splitlines() if line.startswith('{"ts"')]
    assert {(r["action"], r["connection_id"]) for r in audit} >= {
        ("connect", cid),
        ("disconnect", cid),
    }
    assert "hunter2" not in log and "s3cret" not in log


async def test_client_errors_are_reported(served: Served, tmp_path: Path) -> None:
    code, _, err = await served.run("send", "no-such-id", "x")
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = await served.run("connect", "http://127.0.0.1:1/")
    assert code == 1 and "INVALID_ARGUMENT" in err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = await wsm(elsewhere, "list", "--url", served.url)  # no token here
    assert code == 1 and "UNAUTHENTICATED" in err
    env = {**clean_env(), "WSM_INTERNAL_TOKEN": (tmp_path / ".wsm" / "token").read_text().strip()}
    code, out, err = await wsm(elsewhere, "list", "--url", served.url, "--json", env=env)
    assert (code, json.loads(out)) == (0, []), err


async def test_serve_stops_on_sigterm(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), CALL_TIMEOUT) == 0


async def test_unreachable_holder(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await wsm(tmp_path, "list", "--url", url)
    assert code == 1 and "UNAVAILABLE" in err


async def test_holder_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {**clean_env(), "WSM_STATE_URL": "memory://", "WSM_PUBSUB_URL": "inproc://"}
    code, _, err = await wsm(tmp_path, "holder", "--http-port", str(free_port()), env=env)
    assert code == 1 and "WSM_INTERNAL_TOKEN" in err


async def test_holder_runs_with_production_style_config(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    env = {
        **clean_env(),
        "WSM_STATE_URL": redis_url,
        "WSM_PUBSUB_URL": redis_url,
        "WSM_KEY_PREFIX": f"wsm-e2e-{port}:",
        "WSM_INTERNAL_TOKEN": "e2e-token",
        "HOSTNAME": "e2e-holder",
    }
    log = (tmp_path / "holder.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *WSM, "holder", "--http-port", str(port), "--host", "127.0.0.1",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        await read_line_containing(proc.stdout, "listening on")
        code, out, err = await wsm(
            tmp_path, "list", "--url", f"http://127.0.0.1:{port}", "--json", env=env
        )
        assert (code, json.loads(out)) == (0, []), err
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), CALL_TIMEOUT) == 0
        log.close()


async def test_serve_accepts_the_functions_cloudevents(served: Served, echo: WsServers) -> None:
    """``wsm serve`` mounts the functions: the same CloudEvents a cluster's Triggers deliver."""
    import aiohttp

    token = (served.cwd / ".wsm" / "token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    command = "com.virtufin.websocketmanager.command"
    async with aiohttp.ClientSession(headers=auth) as http:
        binary = {
            "ce-specversion": "1.0", "ce-id": "evt-1", "ce-source": "/e2e",
            "ce-type": f"{command}.connect", "Content-Type": "application/json",
        }  # fmt: skip
        body = json.dumps({"url": echo.url("/echo"), "tags": {"via": "function"}})
        for _ in range(2):  # a redelivery answers the first result, not a second connection
            async with http.post(f"{served.url}/functions/connect", data=body,
                                 headers=binary) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()
                assert resp.headers["ce-type"].endswith("result.connect")
                connection_id = (await resp.json())["connection_id"]
        async with http.get(f"{served.url}/v1/connections?via=function") as resp:
            assert [c["id"] for c in (await resp.json())["connections"]] == [connection_id]

        structured = {
            "specversion": "1.0", "id": "evt-2", "source": "/e2e", "type": f"{command}.send",
            "datacontenttype": "application/json",
            "data": {"id": connection_id, "message": "hello via a function"},
        }  # fmt: skip
        async with http.post(
            f"{served.url}/functions/send",
            data=json.dumps(structured),
            headers={"Content-Type": "application/cloudevents+json"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["ce-type"].endswith("result.send")
            assert (await resp.json())["response"] == "hello via a function"

        async with http.post(f"{served.url}/functions/send", data=b"{not json",
                             headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
            assert resp.status == 400
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(f"{served.url}/functions/connect", json={}) as resp:
            assert resp.status == 401
