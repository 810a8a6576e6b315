"""The Dapr state store adapter against REAL ``daprd`` + ``state.redis``: the same contract as the
stand-in tests. daprd cannot be installed on these machines, so here it is skipped (and counted as
skipped) unless ``daprd`` is on PATH."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support.dapr_sidecar import new_dapr_prefix
from wsmanager.adapters.dapr_state import DaprStateStore
from wsmanager.core.errors import ConcurrencyConflict
from wsmanager.ports import ABSENT, Delete, Etag, Upsert

DAPRD = shutil.which("daprd")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(DAPRD is None, reason="real daprd not on PATH (cannot be installed here)")
async def test_real_daprd_state_semantics(redis_url: str, tmp_path: Path) -> None:
    """The same contract against real daprd + state.redis, when a machine has daprd."""
    from dapr.conf import settings

    url = urlparse(redis_url)
    (tmp_path / "statestore.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: statestore}\n"
        "spec:\n  type: state.redis\n  version: v1\n  metadata:\n"
        f"  - {{name: redisHost, value: '{url.hostname}:{url.port or 6379}'}}\n"
        "  - {name: redisPassword, value: ''}\n"
        f"  - {{name: redisDB, value: '{(url.path or '/0').strip('/') or '0'}'}}\n"
    )
    grpc_port, http_port = _free_port(), _free_port()
    command = [DAPRD or "daprd", "--app-id", "wsm-daprd-test", "--resources-path", str(tmp_path)]
    command += ["--dapr-grpc-port", str(grpc_port), "--dapr-http-port", str(http_port)]
    command += ["--metrics-port", str(_free_port()), "--log-level", "warn"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    settings.DAPR_HTTP_ENDPOINT = f"http://127.0.0.1:{http_port}"
    store = DaprStateStore(key_prefix=new_dapr_prefix(), address=f"127.0.0.1:{grpc_port}")
    try:
        await store.open()
        await store.save("lww", b"x")
        with pytest.raises(ConcurrencyConflict):
            await store.save("lww", b"y", expect=ABSENT)
        etag = await store.save("k", b"one", expect=ABSENT)
        with pytest.raises(ConcurrencyConflict):
            await store.save("k", b"two", expect=Etag(str(int(etag) + 5)))
        with pytest.raises(ConcurrencyConflict):
            await store.transact([Upsert("k", b"two", expect=Etag("99999")), Delete("lww")])
        await store.transact([Upsert("k", b"two", expect=etag), Delete("lww")])
        assert {k: v.value for k, v in (await store.bulk_get(["k", "lww"])).items()} == {
            "k": b"two"
        }
        await store.transact([Delete("k")])
    finally:
        await store.close()
        vars(settings).pop("DAPR_HTTP_ENDPOINT", None)
        proc.terminate()
        proc.wait(10)
