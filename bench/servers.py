"""The servers of ``bench/holder_send.py``, each run in its own process: the loopback WebSocket
server and the baseline HTTP->WebSocket forwarder. Usage::

    python bench/servers.py echo PORT
    python bench/servers.py forwarder PORT ws://127.0.0.1:ECHO_PORT/echo

Each prints ``ready`` once it listens and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid

import aiohttp
from aiohttp import web

__all__ = ["echo_role", "forwarder_role"]


async def echo_role(port: int) -> None:
    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        firehose = request.path == "/firehose"
        async for msg in ws:
            if firehose and msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith("go:"):
                for i in range(int(msg.data[3:])):
                    await ws.send_str(f"frame-{i:08d}")
            elif msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/echo", handle)
    app.router.add_get("/firehose", handle)
    await _serve(app, port)


async def forwarder_role(port: int, target: str) -> None:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(target)
    pending: dict[str, asyncio.Future[str]] = {}

    async def reader() -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                future = pending.pop(msg.data[:32], None)
                if future is not None and not future.done():
                    future.set_result(msg.data[32:])

    async def raw(request: web.Request) -> web.Response:
        await ws.send_str(await request.text())
        return web.Response(text="{}", content_type="application/json")

    async def send(request: web.Request) -> web.Response:
        body = await request.text()
        key = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        pending[key] = future
        try:
            await ws.send_str(key + body)
            reply = await asyncio.wait_for(future, 10)
        finally:
            pending.pop(key, None)
        return web.Response(text=reply)

    task = asyncio.create_task(reader())
    app = web.Application()
    app.router.add_post("/raw", raw)
    app.router.add_post("/send", send)
    try:
        await _serve(app, port)
    finally:
        task.cancel()
        await session.close()


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "echo":
        asyncio.run(echo_role(port))
    else:
        asyncio.run(forwarder_role(port, sys.argv[3]))
