"""``wsm serve --instances N`` as a user runs it: N holder processes on one SQLite file and one
token; one is killed with SIGKILL and the other takes its connection over (R4-R7)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.cluster_support import until
from tests.integration.holder_support import WsServers, ws_servers
from tests.integration.test_cli_e2e import CALL_TIMEOUT, clean_env, read_line_containing
from wsmanager.config import Settings
from wsmanager.holder.instances import child_overrides

WSM = [sys.executable, "-m", "wsmanager.cli"]
FAST = [
    "--set", "INSTANCE_HEARTBEAT_INTERVAL_SECONDS=0.2",
    "--set", "INSTANCE_DISCOVERY_INTERVAL_SECONDS=0.2",
    "--set", "INSTANCE_STALE_THRESHOLD_SECONDS=1.5",
    "--set", "STALE_CONNECTION_TTL_SECONDS=1.5",
    "--set", "RECLAIM_INTERVAL_SECONDS=0.5",
]  # fmt: skip
_CHILD = re.compile(r"^\s+(wsm-\d+)\s+pid (\d+)\s+(http://\S+)$")


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for _ in range(200):
        base = random.randint(20_000, 60_000)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free port range")


def test_each_child_is_a_holder_of_its_own() -> None:
    settings = Settings.load(environ={"CLEAR_ALL_ON_START": "true"})
    one, two = child_overrides(settings, 1, 2), child_overrides(settings, 2, 2)
    assert (one["HOSTNAME"], one["HttpPort"], one["CLEAR_ALL_ON_START"]) == (
        "wsm-1",
        "5001",
        "true",
    )
    assert (two["HOSTNAME"], two["HttpPort"], two["CLEAR_ALL_ON_START"]) == (
        "wsm-2",
        "5002",
        "false",
    )
    # GrpcPort (5002 by default) must differ from every HttpPort of the group (unused here).
    assert (one["GrpcPort"], two["GrpcPort"]) == ("5003", "5004")


@pytest.fixture
async def echo() -> AsyncIterator[WsServers]:
    async with ws_servers() as servers:
        yield servers


async def test_kill_one_instance_and_the_other_takes_over(tmp_path: Path, echo: WsServers) -> None:
    base = free_port_range(2)
    log = (tmp_path / "serve.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *WSM, "serve", "--instances", "2", "--http-port", str(base), *FAST,
        cwd=tmp_path, env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=log,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        children: dict[str, tuple[int, str]] = {}
        while len(children) < 2:
            line = await read_line_containing(proc.stdout, " pid ")
            if match := _CHILD.match(line.rstrip("\n")):
                children[match[1]] = (int(match[2]), match[3])
        assert [url for _, url in children.values()] == [
            f"http://127.0.0.1:{base}",
            f"http://127.0.0.1:{base + 1}",
        ]
        token = (tmp_path / ".wsm" / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        (pid1, url1), (_, url2) = children["wsm-1"], children["wsm-2"]
        async with aiohttp.ClientSession(headers=headers) as http:
            body = {"url": echo.url("/echo"), "auto_reconnect": True}
            async with http.post(url1 + "/v1/connect", json=body) as response:
                assert response.status == 200, await response.text()
                cid = (await response.json())["connection_id"]
            os.kill(pid1, signal.SIGKILL)

            async def taken_over() -> bool:
                async with http.get(f"{url2}/v1/connections/{cid}") as response:
                    record = await response.json()
                return (record["instance_id"], record["fencing_token"], record["status"]) == (
                    "wsm-2",
                    2,
                    "CONNECTED",
                )

            await until(taken_over, "wsm-2 to take over the killed wsm-1's connection")
            send = {"message": "still here"}
            async with http.post(f"{url2}/v1/connections/{cid}/send", json=send) as response:
                assert response.status == 200
                assert (await response.json())["response"] == "still here"
        await read_line_containing(proc.stdout, "wsm-1 killed by signal 9")
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stdout.read(), CALL_TIMEOUT)
        assert await asyncio.wait_for(proc.wait(), CALL_TIMEOUT) == 0
        assert "every holder has stopped" in rest.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
