"""The holder's composition root: builds every piece from :class:`~wsmanager.config.Settings`.

:func:`open_components` is an async context manager that opens, in order, the state store
(``WSM_STATE_URL``), the publisher (``WSM_PUBSUB_URL``), the ownership service, one aiohttp
``ClientSession`` for every outbound socket and the :class:`ConnectionManager`, starts the
manager, and closes all of it in reverse order. Pieces passed in (tests inject real stores and
publishers they inspect) are used as given and left open: whoever made them closes them.

Backends by URL (brief §5):

* state: ``memory://``; ``sqlite:///abs/path`` or ``sqlite:rel/path``; ``redis://host:port/db``
  (or ``rediss://``); ``dapr`` (component ``stateStoreName`` on the sidecar).
* pub/sub: ``inproc://``; ``redis://…`` (Redis Streams); ``dapr`` (component ``pubsubName``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from wsmanager.adapters.inproc import InProcessPublisher
from wsmanager.adapters.memory import MemoryStateStore
from wsmanager.clock import SystemClock
from wsmanager.config import Settings
from wsmanager.core import keys
from wsmanager.core.errors import ConfigError
from wsmanager.core.model import Owner, new_incarnation
from wsmanager.holder.audit import AUDIT_LOGGER, AuditLog, StreamSink
from wsmanager.holder.cluster import Cluster
from wsmanager.holder.manager import ConnectionManager
from wsmanager.holder.metrics import HolderMetrics
from wsmanager.holder.peers import PeerClient
from wsmanager.ownership import OwnershipService
from wsmanager.ports import Clock, Publisher, StateStore

__all__ = [
    "LOOPBACK_TARGETS",
    "Components",
    "configure_logging",
    "ensure_token",
    "new_owner",
    "open_components",
    "open_publisher",
    "open_store",
    "run_holder",
    "serve_settings",
]

#: What ``wsm serve`` may connect to without configuration: this machine (brief §5).
LOOPBACK_TARGETS = ("127.0.0.1", "::1", "localhost")
TOKEN_FILE = "token"

log = logging.getLogger("wsmanager.holder")


@dataclass(slots=True)
class Components:
    """Everything one running holder is made of."""

    settings: Settings
    owner: Owner
    clock: Clock
    store: StateStore
    publisher: Publisher
    ownership: OwnershipService
    session: aiohttp.ClientSession
    manager: ConnectionManager
    audit: AuditLog
    metrics: HolderMetrics
    #: Discovery, forwarding, reclaim (R3-R7); ``None`` only when opened without a token.
    cluster: Cluster | None = None


def new_owner(settings: Settings) -> Owner:
    """R1: instance id = ``HOSTNAME`` (else a fresh UUID), plus a new incarnation per start."""
    instance_id = keys.validate_instance_id(settings.instance_id or str(uuid.uuid4()))
    return Owner(instance_id, new_incarnation(time.time(), secrets.token_hex(6)))


def sqlite_path(url: str) -> Path:
    """``sqlite:///abs/path`` -> ``/abs/path``; ``sqlite:rel/path`` -> ``rel/path``."""
    return Path(urlsplit(url).path)


def _dapr_address(settings: Settings) -> str:
    return f"127.0.0.1:{settings.dapr_grpc_port}"


async def open_store(settings: Settings) -> StateStore:
    """The state store ``WSM_STATE_URL`` names, opened (a bad path or host fails here)."""
    url = settings.state_url
    if url is None:
        raise ConfigError("WSM_STATE_URL", "required (sqlite:///path, redis://host:port/db, …)")
    prefix = settings.key_prefix
    scheme = "dapr" if url == "dapr" else urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStateStore(key_prefix=prefix)
    if scheme == "sqlite":
        from wsmanager.adapters.sqlite import SqliteStateStore

        return await SqliteStateStore.open(sqlite_path(url), key_prefix=prefix)
    if scheme in ("redis", "rediss"):
        from wsmanager.adapters.redis import RedisStateStore

        store = RedisStateStore(url, key_prefix=prefix)
        try:
            await store.ping()
        except BaseException:
            await store.close()
            raise
        return store
    if scheme == "dapr":
        from wsmanager.adapters.dapr_state import DaprStateStore

        dapr = DaprStateStore(
            settings.state_store_name, key_prefix=prefix, address=_dapr_address(settings)
        )
        return await dapr.open()
    raise ConfigError("WSM_STATE_URL", f"unsupported scheme {scheme!r}")


async def open_publisher(settings: Settings) -> Publisher:
    """The publisher ``WSM_PUBSUB_URL`` names."""
    url = settings.pubsub_url
    if url is None:
        raise ConfigError("WSM_PUBSUB_URL", "required (inproc://, redis://host:port/db, dapr)")
    scheme = url if url in ("dapr", "knative") else urlsplit(url).scheme.lower()
    if scheme == "inproc":
        return InProcessPublisher()
    if scheme in ("redis", "rediss"):
        from wsmanager.adapters.redis_streams import RedisStreamPublisher

        publisher = RedisStreamPublisher(url)
        try:
            await publisher.ping()
        except BaseException:
            await publisher.close()
            raise
        return publisher
    if scheme == "dapr":
        from wsmanager.adapters.dapr_pubsub import DaprPublisher

        return await DaprPublisher(settings.pubsub_name, address=_dapr_address(settings)).open()
    raise ConfigError("WSM_PUBSUB_URL", f"{scheme!r} is not available in this build yet")


@asynccontextmanager
async def open_components(
    settings: Settings,
    *,
    owner: Owner | None = None,
    token: str | None = None,
    audit: AuditLog | None = None,
    metrics: HolderMetrics | None = None,
    store: StateStore | None = None,
    publisher: Publisher | None = None,
    clock: Clock | None = None,
    drain: bool = True,
) -> AsyncIterator[Components]:
    """Open a whole holder, start its manager and cluster loops; on exit stop the loops, stop
    the manager (``drain``: R11), hand released records to peers (``drain``) and close.

    ``token`` (default ``WSM_INTERNAL_TOKEN``) is what this holder sends to its peers; without
    one the holder runs alone (no forwarding, no reclaim).

    Raises:
        ConfigError: a backend URL is missing or unsupported.
        StoreUnavailable / Unavailable: a backend did not answer at start-up.
    """
    owner = owner or new_owner(settings)
    clock = clock or SystemClock()
    metrics = metrics or HolderMetrics()
    audit = audit or AuditLog(on_failure=metrics.audit_failures.inc)
    async with AsyncExitStack() as stack:
        if store is None:
            store = await open_store(settings)
            stack.push_async_callback(store.close)
        if publisher is None:
            publisher = await open_publisher(settings)
            stack.push_async_callback(publisher.close)
        ownership = OwnershipService(
            store,
            me=owner,
            policy=settings.liveness_policy(),
            clock=clock,
            endpoint=settings.advertised_endpoint(),
            record_ttl=float(settings.connection_record_ttl),
        )
        if settings.clear_all_on_start:
            # R10: destructive maintenance switch, before anything is served; said loudly.
            log.critical(
                "CLEAR_ALL_ON_START=TRUE: deleting EVERY connection record and index in %s (R10)",
                settings.redacted()["WSM_STATE_URL"],
            )
            removed = await ownership.clear_all()
            log.critical("CLEAR_ALL_ON_START: removed %d connection records", removed)
        # limit=0: the default connector stops at 100 open connections, and every outbound
        # WebSocket holds one for its whole life (brief §6).
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        stack.push_async_callback(session.close)
        manager = ConnectionManager(
            settings, ownership, publisher, session=session, clock=clock, audit=audit,
            metrics=metrics,
        )  # fmt: skip
        if token is None and settings.internal_token is not None:
            token = settings.internal_token.get_secret_value()
        cluster: Cluster | None = None
        if token:
            peers = await PeerClient(token, owner.instance_id).open()
            stack.push_async_callback(peers.close)
            cluster = Cluster(settings, manager, peers, metrics=metrics)
            # Runs after manager.stop: the released records go to peers at once (R11).
            stack.push_async_callback(cluster.after_stop, drain)
        await manager.start()
        stack.push_async_callback(manager.stop, drain)
        if cluster is not None:
            await cluster.start()
            stack.push_async_callback(cluster.stop)  # first at shutdown: no reclaim while draining
        yield Components(
            settings=settings,
            owner=owner,
            clock=clock,
            store=store,
            publisher=publisher,
            ownership=ownership,
            session=session,
            manager=manager,
            audit=audit,
            metrics=metrics,
            cluster=cluster,
        )


# -- running a holder from the command line ---------------------------------------------------


def ensure_token(data_dir: Path) -> str:
    """The token in ``<data_dir>/token``, created (mode 0600) if missing or empty.

    An existing token is reused, so several local processes sharing the directory (and its
    SQLite state) also share one token, and clients keep working across restarts.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / TOKEN_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    token = secrets.token_urlsafe(32)
    # O_CREAT with 0600: the file is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    os.chmod(path, 0o600)  # an older, wider file keeps its mode through O_CREAT
    return token


def serve_settings(settings: Settings, data_dir: Path) -> Settings:
    """``wsm serve`` defaults for what the user left unset: SQLite state under ``data_dir``,
    in-process pub/sub, loopback targets allowed."""
    update: dict[str, object] = {}
    if settings.state_url is None:
        update["state_url"] = f"sqlite:///{(data_dir / 'state.db').resolve()}"
    if settings.pubsub_url is None:
        update["pubsub_url"] = "inproc://"
    if not settings.allowed_target_hosts:
        update["allowed_target_hosts"] = LOOPBACK_TARGETS
    return settings.model_copy(update=update)


def configure_logging(settings: Settings) -> None:
    """Logs to stderr at ``Logging:LogLevel:Default``; audit records as bare JSON lines.

    Audit records are written whatever the level: they are the security trail (brief §8).
    """
    root = logging.getLogger()
    root.setLevel(settings.python_log_level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    audit = logging.getLogger(AUDIT_LOGGER)
    audit_handler = logging.StreamHandler(sys.stderr)
    audit_handler.setFormatter(logging.Formatter("%(message)s"))
    audit.handlers[:] = [audit_handler]
    audit.setLevel(logging.INFO)
    audit.propagate = False


def run_holder(
    settings: Settings,
    *,
    host: str,
    token: str,
    on_listening: Callable[[str], None],
    functions: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (R11). Blocks; errors propagate.

    ``functions``: also serve the CloudEvent functions at ``/functions/<name>`` (``wsm serve``).
    """
    from wsmanager.holder.app import create_app, serve

    async def main() -> None:
        metrics = HolderMetrics()
        count = metrics.audit_failures.inc
        sink = StreamSink(sys.stderr, on_failure=count)
        audit = AuditLog(sink, on_failure=count)
        app = create_app(settings, token=token, audit=audit, metrics=metrics)
        if functions:
            from wsmanager.holder.functions_mount import mount_functions

            mount_functions(app)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, host=host, port=settings.http_port, stop=stop, on_listening=on_listening)

    asyncio.run(main())
