"""An async HTTP client for the holder's REST API, and the ``wsm`` client subcommands on it.

:class:`WsmClient` maps each REST route to one method. Error answers are raised as the
``core.errors`` class their code names (``NotFound``, ``DeadlineExceeded``, …) via
:func:`~wsmanager.core.errors.from_error_body`, with ``details["code"]`` and
``details["http_status"]`` holding what the holder said; an unreachable holder is
:class:`~wsmanager.core.errors.Unavailable`.

The token comes from ``WSM_INTERNAL_TOKEN``, else the ``token`` file ``wsm serve`` writes into
its data directory (``./.wsm/token``): :func:`find_token`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from wsmanager.core.errors import Unavailable, WsmError, from_error_body

__all__ = ["DEFAULT_URL", "TOKEN_FILE", "WsmClient", "find_token"]

DEFAULT_URL = "http://127.0.0.1:5001"
#: Where ``wsm serve`` keeps its token, relative to its data directory.
TOKEN_FILE = "token"


def find_token(
    environ: Mapping[str, str], token_file: str | Path | None = None, data_dir: str | Path = ".wsm"
) -> str | None:
    """``WSM_INTERNAL_TOKEN``, else the first line of ``token_file`` (default
    ``<data_dir>/token``), else ``None``."""
    token = environ.get("WSM_INTERNAL_TOKEN", "").strip()
    if token:
        return token
    path = Path(token_file) if token_file is not None else Path(data_dir) / TOKEN_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def _quoted(value: str) -> str:
    return quote(value, safe="")


class WsmClient:
    """The holder's REST API. Use as ``async with WsmClient(url, token) as client: ...``.

    Args:
        url: the holder's base URL.
        token: the internal token (``None``: only the open routes will work).
        session: an aiohttp session to use (left open); default: one of its own.
        timeout: seconds per request (a correlated send also waits for its ``timeout_ms``).
        correlation_id: sent as ``X-Correlation-Id`` on every request when given.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 60.0,
        correlation_id: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        if correlation_id:
            self._headers["X-Correlation-Id"] = correlation_id
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"WsmClient({self.url!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> WsmClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            async with self.session.request(
                method,
                self.url + path,
                json=body,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach the holder at {self.url} ({exc!r})") from exc
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = None
        if status >= 400:
            raise _error(data, status)
        return data

    # -- connections ---------------------------------------------------------------------

    async def connect(
        self,
        url: str,
        *,
        tags: Mapping[str, str] | None = None,
        auto_reconnect: bool = False,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "auto_reconnect": auto_reconnect}
        if tags:
            body["tags"] = dict(tags)
        if content_type:
            body["content_type"] = content_type
        result: dict[str, Any] = await self._call("POST", "/v1/connect", body)
        return result

    async def list(self, filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        data = await self._call("GET", "/v1/connections", params=dict(filters or {}))
        connections: list[dict[str, Any]] = data["connections"]
        return connections

    async def get(self, connection_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/connections/{_quoted(connection_id)}"
        )
        return result

    async def disconnect(self, connection_id: str) -> None:
        await self._call("DELETE", f"/v1/connections/{_quoted(connection_id)}")

    async def send(
        self,
        connection_id: str,
        message: str,
        *,
        content_type: str | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, Any]:
        """Correlated send; returns ``{"response": ..., "content_type": ...}``."""
        body: dict[str, Any] = {"message": message}
        if content_type:
            body["content_type"] = content_type
        if timeout_ms is not None:
            body["timeout_ms"] = timeout_ms
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/connections/{_quoted(connection_id)}/send", body
        )
        return result

    async def send_raw(
        self, connection_id: str, message: str, *, content_type: str | None = None
    ) -> None:
        body: dict[str, Any] = {"message": message}
        if content_type:
            body["content_type"] = content_type
        await self._call("POST", f"/v1/connections/{_quoted(connection_id)}/sendraw", body)

    async def start_publish(self, connection_id: str, topic: str) -> dict[str, Any]:
        path = f"/v1/connections/{_quoted(connection_id)}/publish"
        result: dict[str, Any] = await self._call("POST", path, {"topic": topic})
        return result

    async def stop_publish(self, connection_id: str) -> dict[str, Any]:
        path = f"/v1/connections/{_quoted(connection_id)}/publish"
        result: dict[str, Any] = await self._call("DELETE", path)
        return result

    # -- tags ----------------------------------------------------------------------------

    async def get_tag(self, connection_id: str, key: str) -> str | None:
        path = f"/v1/connections/{_quoted(connection_id)}/tags/{_quoted(key)}"
        value: str | None = (await self._call("GET", path))["value"]
        return value

    async def set_tag(self, connection_id: str, key: str, value: str) -> None:
        path = f"/v1/connections/{_quoted(connection_id)}/tags/{_quoted(key)}"
        await self._call("POST", path, {"value": value})

    async def get_tags(self, connection_id: str) -> dict[str, str]:
        path = f"/v1/connections/{_quoted(connection_id)}/tags"
        tags: dict[str, str] = (await self._call("GET", path))["tags"]
        return tags

    async def set_tags(self, connection_id: str, tags: Mapping[str, str]) -> None:
        path = f"/v1/connections/{_quoted(connection_id)}/tags"
        await self._call("PUT", path, {"tags": dict(tags)})

    # -- operations ----------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/health")
        return result

    async def ready(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/ready")
        return result

    async def tail(
        self,
        topic: str,
        *,
        limit: int | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the topic's events (``message`` and ``overflow`` lines) as they arrive.

        ``on_subscribed`` runs once the holder has registered the subscription: everything
        published after that is seen.
        """
        params = {"limit": str(limit)} if limit is not None else None
        url = f"{self.url}/v1/topics/{_quoted(topic)}/events"
        # No total timeout: a tail lasts as long as the caller wants.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total)
        try:
            async with self.session.get(
                url, params=params, headers=self._headers, timeout=timeout
            ) as response:
                if response.status >= 400:
                    text = await response.text()
                    try:
                        data = json.loads(text)
                    except ValueError:
                        data = None
                    raise _error(data, response.status)
                async for raw in response.content:
                    if not raw.strip():
                        continue
                    line: dict[str, Any] = json.loads(raw)
                    kind = line.get("type")
                    if kind == "subscribed":
                        if on_subscribed is not None:
                            on_subscribed()
                    elif kind != "keepalive":
                        yield line
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"lost the holder at {self.url} ({exc!r})") from exc


def _error(data: Any, status: int) -> WsmError:
    error = from_error_body(data, status)
    inner = data.get("error") if isinstance(data, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    error.details.update(code=code or error.code, http_status=status)
    return error
