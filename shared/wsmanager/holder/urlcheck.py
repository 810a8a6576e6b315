"""The I/O half of the outbound-URL check (brief §8): resolve the host, check every address.

:func:`wsmanager.core.validation.validate_url` decides everything the URL text alone decides.
Here a host *name* that is not allow-listed is resolved with the event loop's ``getaddrinfo``,
and the URL is refused if **any** address it resolves to is private, loopback, link-local,
cloud metadata or otherwise not public: a name with one public and one private address could
otherwise be steered to the private one.

Known limit: the socket is opened by aiohttp, which resolves the name again (a DNS rebinding
window between the two lookups). Closing it needs a resolver pinned to the checked addresses
in the caller's connector; the caller owns the session, so that is a deployment choice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

from wsmanager.core.errors import InvalidArgument, Unavailable
from wsmanager.core.validation import ParsedUrl, address_refusal, host_allowed, validate_url

__all__ = ["Resolver", "check_target", "system_resolver"]

#: ``(host, port) -> addresses``; tests and deployments may pass their own.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, via the running loop's ``getaddrinfo``."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


async def check_target(
    url: str,
    allowed_hosts: Iterable[str],
    *,
    resolver: Resolver = system_resolver,
    timeout: float = 5.0,
) -> ParsedUrl:
    """Validate ``url`` and, for a host name that is not allow-listed, every resolved address.

    Raises:
        InvalidArgument: a bad URL, or a host that is (or resolves to) a refused address.
        Unavailable: the name does not resolve right now (DNS may recover: retryable).
    """
    allowed = tuple(allowed_hosts)
    parsed = validate_url(url, allowed)
    if parsed.ip is not None or host_allowed(parsed.host, parsed.port, allowed):
        return parsed
    try:
        async with asyncio.timeout(timeout):
            addresses = await resolver(parsed.host, parsed.port)
    except (OSError, TimeoutError) as exc:
        raise Unavailable(f"cannot resolve host {parsed.host}: {exc}") from None
    if not addresses:
        raise Unavailable(f"host {parsed.host} resolves to no address")
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise InvalidArgument(f"host {parsed.host} resolves to a non-IP {address!r}") from None
        # An allow-listed *address* (or network) also admits a name that resolves to it.
        if host_allowed(str(ip), parsed.port, allowed):
            continue
        reason = address_refusal(ip)
        if reason is not None:
            raise InvalidArgument(
                f"url host {parsed.host} resolves to {reason} ({ip}); "
                "add it to AllowedTargetHosts to allow it"
            )
    return parsed
