"""Adapter-specific behaviour beyond the shared conformance suite: several OS processes on one
SQLite file, backend failures mapped to StoreUnavailable, Redis client ownership and layout."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.integration.conftest import new_prefix
from tests.integration.test_store_conformance import BAD, add_one, race
from tests.support.redis_server import free_port
from wsmanager.adapters.redis import RedisStateStore
from wsmanager.adapters.sqlite import SqliteStateStore
from wsmanager.core.errors import InvalidArgument, StoreUnavailable
from wsmanager.ports import ABSENT, Upsert, Versioned

# Another OS process on the same SQLite file: once the go-file exists it makes one CAS on "k"
# with the given ETag (prints won/lost), then adds one to "n" 30 times (CAS + retry).
_PROCESS = """
import asyncio, os, sys, time
from wsmanager.adapters.sqlite import SqliteStateStore
from wsmanager.core.errors import ConcurrencyConflict
from tests.integration.test_store_conformance import add_one

async def main(path, prefix, etag, go):
    store = SqliteStateStore(path, key_prefix=prefix)
    await store.ping()
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        await store.save("k", f"process-{os.getpid()}".encode(), expect=etag)
        print("won", flush=True)
    except ConcurrencyConflict:
        print("lost", flush=True)
    for _ in range(30):
        await add_one(store, "n")
    await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_sqlite_cas_across_os_processes(tmp_path: Path) -> None:
    path, prefix, go = tmp_path / "shared.db", new_prefix(), tmp_path / "go"
    local = SqliteStateStore(path, key_prefix=prefix)
    etag = await local.save("k", b"start")
    await local.save("n", b"0")
    root = str(Path(__file__).parents[2])
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PROCESS,
            str(path),
            prefix,
            etag,
            str(go),
            stdout=asyncio.subprocess.PIPE,
            cwd=root,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
        go.touch()
        wins, losses = await race([local] * 4, "k", etag)
        await asyncio.gather(*(add_one(local, "n") for _ in range(30)))
        outputs = [(await asyncio.wait_for(p.communicate(), 120))[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4
        wins += outputs.count(b"won\n")
        losses += outputs.count(b"lost\n")
        assert (wins, losses) == (1, 7)
        final = await local.get("n")
        assert final is not None and final.value == b"150"  # 4 x 30 + 30: no update lost
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await local.close()


async def test_redis_unreachable_is_store_unavailable() -> None:
    store = RedisStateStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", key_prefix="p:")
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            store.ping,
            lambda: store.get("k"),
            lambda: store.bulk_get(["k"]),
            lambda: store.save("k", b"v"),
            lambda: store.delete("k", expect=BAD),
            lambda: store.transact([Upsert("k", b"v")]),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            assert "hunter2" not in str(caught.value)
        assert "hunter2" not in repr(store)
    finally:
        await store.close()


async def test_redis_store_with_a_callers_client(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    store = RedisStateStore(client, key_prefix=new_prefix())
    try:
        assert repr(store).startswith("RedisStateStore(client=")
        await client.set(store._prefix + "foreign", b"a plain string")  # not the hash layout
        assert await store.get("foreign") is None
        assert await store.bulk_get(["foreign"]) == {}
        await store.save("foreign", b"ours", expect=ABSENT)  # absent for writes too
        await store.close()
        assert await client.ping()  # the caller's client stays open
        await store.drop_namespace()
        with pytest.raises(InvalidArgument):
            RedisStateStore(Redis.from_url(redis_url, decode_responses=True))
    finally:
        await client.aclose()


async def test_sqlite_lock_timeout_is_store_unavailable(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path / "s.db", busy_timeout=0.2)
    etag = await store.save("k", b"v")
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(StoreUnavailable):
            await store.save("k", b"w")
        assert await store.get("k") == Versioned(b"v", etag)  # WAL: reads still work
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await store.save("k", b"w", expect=etag)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    with pytest.raises(StoreUnavailable):
        await SqliteStateStore.open(tmp_path / "s.db" / "not-a-dir.db")
