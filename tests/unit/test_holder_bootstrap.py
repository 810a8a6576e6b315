"""The composition root: identity, backends by URL, the token file and ``wsm serve`` defaults."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from wsmanager.adapters.inproc import InProcessPublisher
from wsmanager.adapters.memory import MemoryStateStore
from wsmanager.adapters.sqlite import SqliteStateStore
from wsmanager.config import Settings
from wsmanager.core.errors import ConfigError
from wsmanager.holder.bootstrap import (
    LOOPBACK_TARGETS,
    ensure_token,
    new_owner,
    open_publisher,
    open_store,
    serve_settings,
    sqlite_path,
)


def settings(**environ: str) -> Settings:
    return Settings.load(environ=environ)


def test_instance_id_is_hostname_else_a_uuid_and_every_start_is_a_new_incarnation() -> None:
    a, b = new_owner(settings(HOSTNAME="pod-7")), new_owner(settings(HOSTNAME="pod-7"))
    assert a.instance_id == b.instance_id == "pod-7"
    assert a.incarnation != b.incarnation  # R1: a restarted pod is a new incarnation
    c, d = new_owner(settings()), new_owner(settings())
    assert c.instance_id != d.instance_id and len(c.instance_id) == 36


def test_sqlite_urls() -> None:
    assert sqlite_path("sqlite:///var/lib/wsm/state.db") == Path("/var/lib/wsm/state.db")
    assert sqlite_path("sqlite:data/state.db") == Path("data/state.db")


async def test_stores_by_url(tmp_path: Path) -> None:
    memory = await open_store(settings(WSM_STATE_URL="memory://"))
    assert isinstance(memory, MemoryStateStore)
    path = tmp_path / "sub" / "state.db"
    sqlite = await open_store(settings(WSM_STATE_URL=f"sqlite://{path}"))
    try:
        assert isinstance(sqlite, SqliteStateStore) and path.exists()
    finally:
        await sqlite.close()
    with pytest.raises(ConfigError) as info:
        await open_store(settings())
    assert info.value.key == "WSM_STATE_URL"


async def test_publishers_by_url() -> None:
    publisher = await open_publisher(settings(WSM_PUBSUB_URL="inproc://"))
    assert isinstance(publisher, InProcessPublisher)
    await publisher.close()
    with pytest.raises(ConfigError) as info:
        await open_publisher(settings())
    assert info.value.key == "WSM_PUBSUB_URL"
    knative = settings(WSM_PUBSUB_URL="knative", K_SINK="http://broker.example/")
    with pytest.raises(ConfigError):
        await open_publisher(knative)


def test_token_file_is_private_and_reused(tmp_path: Path) -> None:
    data = tmp_path / ".wsm"
    token = ensure_token(data)
    path = data / "token"
    assert len(token) >= 32 and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(data) == token  # a second local process shares it
    path.write_text("\n")
    assert ensure_token(data) not in ("", token)  # an empty file gets a fresh token


def test_serve_defaults_fill_only_what_is_unset(tmp_path: Path) -> None:
    filled = serve_settings(settings(), tmp_path)
    assert filled.state_url == f"sqlite:///{(tmp_path / 'state.db').resolve()}"
    assert filled.pubsub_url == "inproc://"
    assert filled.allowed_target_hosts == LOOPBACK_TARGETS
    kept = serve_settings(
        settings(WSM_STATE_URL="memory://", AllowedTargetHosts="example.com"), tmp_path
    )
    assert kept.state_url == "memory://" and kept.allowed_target_hosts == ("example.com",)
