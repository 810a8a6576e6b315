"""Holder-to-holder HTTP: one pooled keep-alive session that forwards commands to the owner
(R3) and asks peers to adopt records (R7, R11).

Every call carries the internal token (brief §8) and the correlation id. A forwarded command
also carries :data:`FORWARDED_HEADER` (the forwarding instance id: the receiver never forwards
it again, so forwarding cannot loop) and :data:`TOKEN_HEADER` (the fencing token it was routed
on: the receiver refuses it with NotOwner unless that is still its current token, R3).

A failure to get an answer is :class:`PeerUnreachable` (503, retryable), which says whether the
request may have reached the peer (``sent``): only one that certainly did not may be re-routed
(a send that may have gone out is never sent twice).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from wsmanager.core.errors import OwnerUnreachable

__all__ = [
    "ADOPT_PATH",
    "FORWARDED_HEADER",
    "TOKEN_HEADER",
    "PeerAnswer",
    "PeerClient",
    "PeerUnreachable",
]

#: Where a holder takes over sockets for records a reclaim gave it (the functions call it too).
ADOPT_PATH = "/internal/v1/adopt"
#: Marks a forwarded request; the value is the forwarding holder's instance id.
FORWARDED_HEADER = "X-Wsm-Forwarded"
#: The fencing token a request was routed on (R3); the owner refuses a stale one.
TOKEN_HEADER = "X-Wsm-Fencing-Token"
#: Request headers passed on unchanged when forwarding (besides the ones set here).
_PASSED = ("Content-Type", "traceparent", "tracestate")
_JSON = "application/json"


class PeerUnreachable(OwnerUnreachable):
    """No answer from a peer. ``sent``: the request may have been received and acted on."""

    def __init__(self, endpoint: str, message: str, *, sent: bool) -> None:
        super().__init__(f"holder {endpoint} did not answer: {message}", endpoint=endpoint)
        self.endpoint = endpoint
        self.sent = sent


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """A peer's HTTP answer, unchanged."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class PeerClient:
    """The pooled session to peers. Open it inside the event loop that uses it.

    Args:
        token: the internal bearer token.
        instance_id: mine, sent in :data:`FORWARDED_HEADER`.
        connect_timeout: seconds to establish a connection to a peer; beyond it the peer is
            unreachable and the request certainly not sent.
    """

    def __init__(self, token: str, instance_id: str, *, connect_timeout: float = 3.0) -> None:
        self._token = token
        self.instance_id = instance_id
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"PeerClient({self.instance_id!r}, open={self._session is not None})"

    async def open(self) -> PeerClient:
        if self._session is None:
            # limit=0: a correlated send holds its connection for its whole timeout, and the
            # default connector stops at 100 (brief §6). Keep-alive: one TCP handshake per peer.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
                headers={"Authorization": f"Bearer {self._token}"},
            )
        return self

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise OwnerUnreachable("the peer client is closed")
        return self._session

    async def forward(
        self,
        endpoint: str,
        *,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        body: bytes,
        correlation_id: str,
        fencing_token: int,
        timeout: float,
    ) -> PeerAnswer:
        """Make the same request on the peer at ``endpoint``; its answer, unchanged.

        ``raw_path`` is the request's path and query exactly as received (still encoded).

        Raises:
            PeerUnreachable: no HTTP answer (refused, reset, timed out).
        """
        sent = {name: headers[name] for name in _PASSED if name in headers}
        sent["X-Correlation-Id"] = correlation_id
        sent[FORWARDED_HEADER] = self.instance_id
        sent[TOKEN_HEADER] = str(fencing_token)
        url = URL(endpoint.rstrip("/") + raw_path, encoded=True)
        return await self._request(method, url, endpoint, sent, body or None, timeout)

    async def adopt(
        self,
        endpoint: str,
        ids: Sequence[str],
        *,
        correlation_id: str,
        previous_owners: Mapping[str, str | None] | None = None,
        timeout: float = 30.0,
    ) -> PeerAnswer:
        """Ask the peer at ``endpoint`` to hold (open) records it now owns."""
        payload: dict[str, Any] = {"ids": list(ids)}
        if previous_owners:
            payload["previous_owners"] = dict(previous_owners)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": _JSON, "X-Correlation-Id": correlation_id}
        url = URL(endpoint.rstrip("/") + ADOPT_PATH)
        return await self._request("POST", url, endpoint, headers, body, timeout)

    async def _request(
        self,
        method: str,
        url: URL,
        endpoint: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> PeerAnswer:
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=self.connect_timeout)
        try:
            async with self.session.request(
                method, url, data=body, headers=headers, timeout=limits, allow_redirects=False
            ) as response:
                data = await response.read()
                return PeerAnswer(
                    response.status, response.headers.get("Content-Type", _JSON), data
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Connecting failed or timed out: the peer never saw the request.
            raise PeerUnreachable(endpoint, type(exc).__name__, sent=False) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PeerUnreachable(endpoint, type(exc).__name__, sent=True) from exc
