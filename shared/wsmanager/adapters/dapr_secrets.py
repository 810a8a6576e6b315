"""Secret stores: Dapr's (production) and the environment or a directory of files (local runs).

Both answer ``get_secret(name) -> str | None``; ``None`` means "no such secret" (an empty value
counts as none), and a store that cannot answer raises Unavailable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsmanager.adapters.dapr_state import SidecarComponent, rpc_status
from wsmanager.adapters.resilience import Resilience, guarded_call
from wsmanager.core.errors import Internal, InvalidArgument, Unavailable

__all__ = ["DaprSecretStore", "EnvSecretStore"]


class DaprSecretStore(SidecarComponent):
    """A Dapr secret store component (e.g. ``kubernetes``, ``local.file``).

    A Dapr secret is a map; the value under the secret's own name is used, else the only value
    (a Kubernetes Secret with one key). A missing secret comes back from daprd as an INTERNAL
    error whose text says "not found": that is ``None``, not a failure.
    """

    def __init__(
        self,
        store_name: str = "secretstore",
        *,
        client: Any = None,
        address: str | None = None,
        call_timeout: float = 5.0,
        resilience: Resilience | None = None,
    ) -> None:
        if not isinstance(store_name, str) or not store_name.strip():
            raise InvalidArgument("store_name must be a non-empty string")
        self._store = store_name
        super().__init__(
            client=client, address=address, call_timeout=call_timeout, resilience=resilience
        )

    def __repr__(self) -> str:
        return f"DaprSecretStore({self._store!r})"

    async def get_secret(self, name: str) -> str | None:
        if not isinstance(name, str) or not name:
            raise InvalidArgument("secret name must be a non-empty string")
        client = self._client
        if client is None:
            raise Internal(f"{self!r} used before open()")

        async def fetch() -> dict[str, str] | None:
            try:
                resp = await client.get_secret(self._store, name)
            except Exception as exc:
                if "not found" in rpc_status(exc)[1].lower():
                    return None
                raise
            return dict(resp.secret)

        values = await guarded_call(
            self._resilience, fetch, timeout=self._timeout, map_error=self._error
        )
        if not values:
            return None
        value = values.get(name) or (next(iter(values.values())) if len(values) == 1 else None)
        return value or None

    def _error(self, exc: Exception) -> Unavailable:
        code, text = rpc_status(exc)
        if isinstance(exc, TimeoutError):
            text = f"no answer in {self._timeout} s"
        return Unavailable(f"Dapr secret store {self._store!r}: {code or 'error'}: {text}")


class EnvSecretStore:
    """Secrets from an environment mapping, then (optionally) from files in ``files_dir``.

    ``wsm-internal-token`` is read from ``WSM_INTERNAL_TOKEN`` (upper case, ``-`` and ``.`` to
    ``_``), then from the file ``files_dir/wsm-internal-token`` (a mounted Kubernetes Secret
    has one file per key); one trailing newline is stripped.
    """

    def __init__(self, environ: Mapping[str, str], files_dir: str | os.PathLike[str] | None = None):
        self._environ = environ
        self._dir = Path(files_dir) if files_dir is not None else None

    def __repr__(self) -> str:
        return f"EnvSecretStore(files_dir={self._dir!r})"

    @staticmethod
    def variable_name(name: str) -> str:
        return name.upper().replace("-", "_").replace(".", "_")

    async def get_secret(self, name: str) -> str | None:
        if (
            not isinstance(name, str)
            or not name
            or "/" in name
            or "\\" in name
            or name in ("..", ".")
        ):
            raise InvalidArgument(f"bad secret name {name!r}")
        value = self._environ.get(self.variable_name(name))
        if value:
            return value
        if self._dir is None:
            return None
        try:
            text = await asyncio.to_thread((self._dir / name).read_text, encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Unavailable(f"secret file {name!r} unreadable: {exc}") from exc
        return text.removesuffix("\n").removesuffix("\r") or None
