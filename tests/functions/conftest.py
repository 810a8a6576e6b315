"""Fixtures for the function tests: a fresh store namespace, real holders, the echo server, and
the functions served by functions-framework (ASGI mode) with their runtime installed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.functions.harness import (
    TOKEN,
    EchoServer,
    FunctionServer,
    Holder,
    base_environ,
)
from wsmanager.adapters.redis import RedisStateStore
from wsmanager.config import Settings
from wsmanager.functions.runtime import Runtime, close_deps, install
from wsmanager.holder.audit import AuditLog

__all__ = ["Cluster"]


@dataclass(slots=True)
class Cluster:
    """Two holders, the echo server, the function server, and a store to look at."""

    environ: dict[str, str]
    store: RedisStateStore
    echo: EchoServer
    functions: FunctionServer
    runtime: Runtime
    audit: list[str] = field(default_factory=list)
    holders: list[Holder] = field(default_factory=list)

    async def add_holder(self, name: str) -> Holder:
        holder = await Holder(name, self.environ).start()
        self.holders.append(holder)
        return holder


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[Cluster]:
    prefix = f"wsm-test-{uuid.uuid4().hex}:"
    environ = base_environ(redis_url, prefix)
    store = RedisStateStore(redis_url, key_prefix=prefix)
    echo = await EchoServer().start()
    settings = Settings.load(environ=environ)
    audit: list[str] = []
    runtime = await Runtime.open(settings, token=TOKEN, audit=AuditLog(audit.append))
    install(runtime)
    functions = await FunctionServer().start()
    made = Cluster(environ, store, echo, functions, runtime, audit)
    try:
        await made.add_holder("holder-a")
        await made.add_holder("holder-b")
        yield made
    finally:
        await functions.stop()
        await close_deps()
        for holder in made.holders:
            await holder.stop()
        await echo.stop()
        await store.drop_namespace()
        await store.close()
