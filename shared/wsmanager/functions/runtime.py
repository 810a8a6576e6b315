"""What a function process is made of, built once: settings, state store, ownership view, the
pooled holder session, the router and the idempotency records.

:func:`deps` builds it at the first request, never at import (functions-framework imports
``main.py`` before anything is configured, and an aiohttp session must be made inside the event
loop that uses it). One runtime per event loop: tests and servers that run several loops each
get their own, and nothing crosses loops. A failed build is retried on the next request, so a
function started before Redis answers recovers by itself.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
import weakref
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp

from wsmanager.clock import SystemClock
from wsmanager.config import Settings, effective_backends
from wsmanager.core import keys
from wsmanager.core.errors import ConfigError, Unavailable
from wsmanager.core.model import Owner, new_incarnation
from wsmanager.functions.client import HolderClient, new_session
from wsmanager.functions.dedupe import Dedupe
from wsmanager.functions.routing import Router
from wsmanager.holder.audit import AuditLog
from wsmanager.ownership import OwnershipService
from wsmanager.ports import Clock, StateStore

__all__ = ["Runtime", "close_deps", "deps", "install"]

#: Slack on top of a base64-encoded MaxMessageBytes for the JSON or CloudEvent envelope.
_BODY_SLACK = 64 * 1024


@dataclass(slots=True)
class Runtime:
    """The dependencies of every function handler; build with :meth:`open`."""

    settings: Settings
    store: StateStore
    ownership: OwnershipService
    router: Router
    dedupe: Dedupe | None
    session: aiohttp.ClientSession
    max_body: int
    _stack: AsyncExitStack

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        store: StateStore | None = None,
        session: aiohttp.ClientSession | None = None,
        token: str | None = None,
        clock: Clock | None = None,
        audit: AuditLog | None = None,
        dedupe: bool = True,
        dedupe_result_ttl: float = 3600.0,
        route_cache_size: int = 4096,
    ) -> Runtime:
        """Build a runtime. Pieces passed in are used as given and left open.

        Raises:
            ConfigError: no internal token, or no usable ``WSM_STATE_URL``.
            StoreUnavailable: the state store did not answer.
        """
        if token is None and session is None:
            secret = settings.internal_token
            token = secret.get_secret_value() if secret is not None else None
            if not token:
                raise ConfigError("WSM_INTERNAL_TOKEN", "required: functions call holders with it")
        clock = clock or SystemClock()
        stack = AsyncExitStack()
        try:
            if store is None:
                # The holder's composition root owns the URL -> adapter mapping; reuse it.
                from wsmanager.holder.bootstrap import open_store

                store = await open_store(settings)
                stack.push_async_callback(store.close)
            if session is None:
                assert token is not None
                session = new_session(token)
                stack.push_async_callback(session.close)
            ownership = OwnershipService(
                store,
                me=_sweeper(settings),
                policy=settings.liveness_policy(),
                clock=clock,
                record_ttl=float(settings.connection_record_ttl),
            )
            router = Router(
                ownership, HolderClient(session), audit=audit, cache_size=route_cache_size
            )
        except BaseException:
            await stack.aclose()
            raise
        return cls(
            settings=settings,
            store=store,
            ownership=ownership,
            router=router,
            dedupe=Dedupe(store, result_ttl=dedupe_result_ttl) if dedupe else None,
            session=session,
            max_body=settings.max_message_bytes * 4 // 3 + _BODY_SLACK,
            _stack=stack,
        )

    async def aclose(self) -> None:
        await self._stack.aclose()

    def __repr__(self) -> str:
        return f"Runtime(store={self.store!r}, me={self.ownership.me})"


def _sweeper(settings: Settings) -> Owner:
    """The identity a function's reclaim sweeps are audited under. It never owns a record:
    sweeps name a live holder as the new owner."""
    host = (settings.instance_id or uuid.uuid4().hex[:12]).replace("/", "-").replace("|", "-")
    instance_id = keys.validate_instance_id(f"wsm-functions-{host}"[:253])
    return Owner(instance_id, new_incarnation(time.time(), secrets.token_hex(6)))


_RUNTIMES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[Runtime]] = (
    weakref.WeakKeyDictionary()
)


async def _build() -> Runtime:
    try:
        settings = effective_backends(Settings.load(environ=os.environ), os.environ)
        return await Runtime.open(settings)
    except ConfigError as exc:
        # Not the caller's fault, and fixable: retryable, so no event is dead-lettered for it.
        raise Unavailable(f"the function is misconfigured: {exc.message}") from exc


async def deps() -> Runtime:
    """The runtime of the running event loop, built from ``os.environ`` at first use.

    Raises:
        Unavailable: misconfigured (the message names the key) or the store did not answer.
    """
    loop = asyncio.get_running_loop()
    future = _RUNTIMES.get(loop)
    failed = (
        future is not None
        and future.done()
        and (future.cancelled() or future.exception() is not None)
    )
    if future is None or failed:
        future = loop.create_task(_build())
        _RUNTIMES[loop] = future
    return await asyncio.shield(future)


def install(runtime: Runtime) -> None:
    """Make ``runtime`` what :func:`deps` returns on the running loop (``wsm serve``, tests)."""
    future: asyncio.Future[Runtime] = asyncio.get_running_loop().create_future()
    future.set_result(runtime)
    _RUNTIMES[asyncio.get_running_loop()] = future


async def close_deps() -> None:
    """Close and forget the running loop's runtime (at shutdown; tests between loops)."""
    future = _RUNTIMES.pop(asyncio.get_running_loop(), None)
    if future is not None and future.done() and not future.cancelled():
        if future.exception() is None:
            await future.result().aclose()
