"""Black-box: correlated Send against a WebSocket server nobody here wrote, the npm ``ws`` package.

``ws`` is strict: a Text frame that is not valid UTF-8 makes it close the connection with 1007
(RFC 6455 §8.1). Raw 16-byte UUID prefixes are therefore impossible on Text frames; the manager
sends the id's 32 hex digits instead, and the connection survives any number of text Sends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.support.ws_servers import Harness, NodeWsServer, ensure_node_ws
from wsmanager.core.model import ConnectionStatus


@pytest.fixture(scope="session")
def node_ws_installed() -> None:
    """``npm ci`` into tests/support/node_ws once, when node_modules is missing."""
    problem = ensure_node_ws()
    if problem is not None:
        pytest.fail(problem, pytrace=False)


@pytest.fixture
async def node(node_ws_installed: None) -> AsyncIterator[NodeWsServer]:
    async with NodeWsServer() as server:
        yield server


async def test_the_strict_server_closes_on_a_raw_uuid_prefix_in_a_text_frame(
    node: NodeWsServer,
) -> None:
    """The premise: what a naive text Send (raw uuid.bytes in a Text frame) would do."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(node.url())
        prefix = uuid.UUID("ffffffff-0000-4000-8000-000000000000").bytes  # not UTF-8
        await ws.send_frame(prefix + b"hello", WSMsgType.TEXT)
        msg = await ws.receive()
        assert msg.type is WSMsgType.CLOSE and msg.data == 1007
        await ws.close()


async def test_correlated_text_sends_work_and_the_connection_survives(node: NodeWsServer) -> None:
    async with Harness() as h:
        cid = await h.connect(node.url())
        for i in range(25):
            text = json.dumps({"op": "ping", "n": i, "note": "ünïcödé"}).encode()
            content_type = "application/json" if i % 2 else "text/plain"
            reply = await h.manager.send(cid, text, content_type=content_type, correlation_id="c")
            assert reply == text
        binary = b"\xff\x00\xfe"
        reply = await h.manager.send(
            cid, binary, content_type="application/octet-stream", correlation_id="c"
        )
        assert reply == binary  # Binary frames carry the raw 16 bytes
        assert await h.status(cid) is ConnectionStatus.CONNECTED
        assert h.manager.connections[cid].is_open
        assert await h.kinds(cid, until="connected") == ["connecting", "connected"]  # no drop
