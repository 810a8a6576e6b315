"""The holder: the long-lived aiohttp service that owns the sockets and serves the REST API."""

from __future__ import annotations

__all__: list[str] = []
