"""The functions' one HTTP client to the holders: a pooled keep-alive aiohttp session that
carries the internal token and the correlation id on every call.

A failure to reach a holder is :class:`HolderUnreachable` (503, retryable), which says whether
the request may have reached the holder (``sent``): only a request that certainly did not may
be retried on another holder without risking a second action.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import aiohttp
from yarl import URL

from wsmanager.core.errors import Unavailable
from wsmanager.functions.commands import HolderCall
from wsmanager.functions.dedupe import Answer
from wsmanager.holder.peers import TOKEN_HEADER  # the holder checks it (R3)

__all__ = ["ADOPT_PATH", "HolderClient", "HolderUnreachable", "new_session"]

#: Where a holder takes over sockets for records a reclaim just gave it (cluster issue).
ADOPT_PATH = "/internal/v1/adopt"
_JSON = "application/json"


class HolderUnreachable(Unavailable):
    """No answer from a holder. ``sent``: the request may have been received."""

    def __init__(self, endpoint: str, message: str, *, sent: bool) -> None:
        super().__init__(f"holder {endpoint} did not answer: {message}", endpoint=endpoint)
        self.endpoint = endpoint
        self.sent = sent


def new_session(token: str, *, limit: int = 0) -> aiohttp.ClientSession:
    """The pooled session. ``limit=0``: the default connector stops at 100 connections, and
    correlated sends may each hold one for their whole timeout (brief §6)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=30.0),
        headers={"Authorization": f"Bearer {token}"},
        json_serialize=lambda o: json.dumps(o, separators=(",", ":"), ensure_ascii=False),
    )


class HolderClient:
    """Calls holders' REST APIs over one shared session (the caller owns the session)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    def __repr__(self) -> str:
        return "HolderClient()"

    async def call(
        self, endpoint: str, call: HolderCall, correlation_id: str, *, token: int | None = None
    ) -> Answer:
        """Make ``call`` on the holder at ``endpoint`` and return its answer unchanged.

        ``token``: the fencing token the route was read at; the holder refuses a stale one with
        412 (R3), so a cached route can never act on a former owner's socket.

        Raises:
            HolderUnreachable: no HTTP answer (refused, reset, timed out).
        """
        url = URL(endpoint.rstrip("/") + call.path, encoded=True)
        if call.query:
            url = url.with_query(list(call.query))
        return await self._request(
            call.method, url, endpoint, call.body, correlation_id, call.timeout, token
        )

    async def adopt(
        self, endpoint: str, ids: Sequence[str], correlation_id: str, *, timeout: float = 30.0
    ) -> Answer:
        """Ask the holder at ``endpoint`` to open sockets for records it now owns."""
        url = URL(endpoint.rstrip("/") + ADOPT_PATH)
        return await self._request(
            "POST", url, endpoint, {"ids": list(ids)}, correlation_id, timeout
        )

    async def _request(
        self,
        method: str,
        url: URL,
        endpoint: str,
        body: dict[str, object] | None,
        correlation_id: str,
        timeout: float,
        token: int | None = None,
    ) -> Answer:
        headers = {"X-Correlation-Id": correlation_id}
        if token is not None:
            headers[TOKEN_HEADER] = str(token)
        try:
            async with self.session.request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                data = await response.read()
                content_type = response.headers.get("Content-Type", _JSON)
                return Answer(response.status, content_type, data)
        except aiohttp.ClientConnectorError as exc:
            # Connecting failed: the holder never saw the request.
            raise HolderUnreachable(endpoint, type(exc).__name__, sent=False) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise HolderUnreachable(endpoint, type(exc).__name__, sent=True) from exc
