"""Input validation: outbound URLs (the SSRF rules of brief §8), tags, topics, tag filters.

Pure: the checks here look at the URL text and at IP literals only (the stdlib ``ipaddress``
module does no I/O). Resolving a host name and checking every address it resolves to is I/O and
lives in the shell (``wsmanager.holder.urlcheck``), which calls :func:`address_refusal` for each
resolved address.

URLs are stored whole in the record (a reconnect or a reclaim needs the credentials), and
redacted whenever they are rendered: logs, lifecycle events, published attributes, API output
(:func:`redact_url`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from wsmanager.core.errors import InvalidArgument

__all__ = [
    "MAX_TAGS",
    "MAX_TAG_KEY",
    "MAX_TAG_VALUE",
    "MAX_TIMEOUT_MS",
    "MAX_TOPIC",
    "MAX_URL",
    "METADATA_ADDRESSES",
    "METADATA_HOSTS",
    "ParsedUrl",
    "address_refusal",
    "host_allowed",
    "parse_tag_filters",
    "redact_text",
    "trace_id",
    "usable_correlation_id",
    "redact_url",
    "validate_tag_key",
    "validate_tag_value",
    "validate_tags",
    "validate_timeout_ms",
    "validate_topic",
    "validate_url",
]

MAX_URL = 2048
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 1024
MAX_TOPIC = 256
#: The longest correlated-Send wait a caller may ask for (10 minutes).
MAX_TIMEOUT_MS = 600_000

#: Cloud metadata endpoints (AWS/GCP/Azure/OpenStack IPv4, AWS IPv6); refused like private ones.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})

# Query parameter names whose values are secrets (matched anywhere in the lower-cased name).
_SECRET_PARAM = re.compile(r"token|key|pass|secret|sig|auth|credential|session|jwt")


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A URL that passed :func:`validate_url`. ``ip`` is set when the host is an IP literal."""

    url: str
    scheme: str
    host: str
    port: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


def _bare_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 reaches 10.0.0.1: judge it as that
    return ip


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an outbound connection to ``ip`` is refused (brief §8), or ``None`` if it is not.

    Anything that is not globally routable is refused: private, loopback, link-local, cloud
    metadata, and also unspecified, shared (CGNAT), reserved and multicast addresses, which an
    attacker could otherwise use to reach the cluster's own network.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def host_allowed(host: str, port: int, allowed_hosts: Iterable[str]) -> bool:
    """Is ``host`` (a name or IP) allow-listed (``AllowedTargetHosts``)?

    An entry matches as a host name (case-insensitive), as ``host:port``, as an IP address
    (compared as addresses, so ``::1`` and ``0:0::1`` agree), as a CIDR network
    (``10.0.0.0/8``), or as ``*`` (everything: for local development only).
    """
    host = host.lower().rstrip(".")
    ip = _bare_ip(host)
    for raw in allowed_hosts:
        entry = raw.strip().lower()
        if entry == "*":
            return True
        entry_host, entry_port = _split_entry(entry)
        if not entry_host or (entry_port is not None and entry_port != port):
            continue
        if entry_host == host:
            return True
        if ip is None:
            continue
        try:
            if "/" in entry_host:
                if ip in ipaddress.ip_network(entry_host, strict=False):
                    return True
            elif _bare_ip(entry_host) == ip:
                return True
        except ValueError:
            continue
    return False


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address or a CIDR network."""
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inside, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else -1
    return entry, None


def validate_url(url: str, allowed_hosts: Iterable[str] = ()) -> ParsedUrl:
    """Check an outbound WebSocket URL (what can be decided without DNS).

    ws/wss only, a host, a valid port, no fragment (RFC 6455 §3), no whitespace or control
    characters, at most 2048 characters. An IP literal, ``localhost`` or a metadata host name
    that is not allow-listed is refused here; other names are resolved and checked in the
    shell.

    Raises:
        InvalidArgument: the message never contains the URL's credentials.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("url is required")
    if len(url) > MAX_URL:
        raise InvalidArgument(f"url is longer than {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidArgument("url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgument(f"url {redact_url(url)!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise InvalidArgument("url must use the ws:// or wss:// scheme")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidArgument("url must name a host")
    if parts.fragment or url.endswith("#"):
        raise InvalidArgument("a WebSocket url must not have a fragment (RFC 6455 §3)")
    if port == 0:
        raise InvalidArgument("url port must be 1-65535")
    port = port or (443 if scheme == "wss" else 80)
    allowed = tuple(allowed_hosts)
    ip = _bare_ip(host)
    if not host_allowed(host, port, allowed):
        if ip is not None:
            reason = address_refusal(ip)
            if reason is not None:
                raise InvalidArgument(
                    f"url host {host} is {reason}; add it to AllowedTargetHosts to allow it"
                )
        elif host in METADATA_HOSTS:
            raise InvalidArgument(f"url host {host} is a cloud metadata endpoint")
        elif host == "localhost" or host.endswith(".localhost"):
            raise InvalidArgument(
                f"url host {host} is a loopback name; add it to AllowedTargetHosts to allow it"
            )
    return ParsedUrl(url=url, scheme=scheme, host=host, port=port, ip=ip)


def redact_url(url: str, *, keep_user: bool = False) -> str:
    """The URL as it may be shown: credentials hidden, secret-looking query values as ``***``.

    By default the whole userinfo is removed (what API output, events and logs of outbound URLs
    show). ``keep_user=True`` keeps the user name and shows a password as ``***`` (what
    ``wsm config`` shows of backend URLs, so an operator sees that a password is set).
    Non-secret query parameters are kept byte for byte; an empty ``//`` authority survives.
    Something that does not parse as a URL is not shown at all.
    """
    try:
        parts = urlsplit(url)
    except (ValueError, TypeError):
        return "<invalid url>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = hostport
    if keep_user and at:
        user, colon, password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon and password else f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        out = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            out.append(f"{name}=***" if eq and _SECRET_PARAM.search(name.lower()) else pair)
        query = "&".join(out)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # unchanged (and urlunsplit would drop an empty "//" authority)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URL_PASSWORD = re.compile(r"(//[^/@?#:\s]*:)[^/?#\s]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s]*", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Free text (an exception message, say) with URL passwords replaced by ``***``."""
    # Up to the last "@" of the authority, as urllib does: a raw "@" in a password stays hidden.
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


# What an X-Correlation-Id may be: printable ASCII without spaces, at most 128 characters.
_CORRELATION_OK = re.compile(r"[\x21-\x7e]{1,128}")
# W3C trace context: version-traceid-parentid-flags; an all-zero trace id is invalid.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def usable_correlation_id(value: str | None) -> str | None:
    """``value`` (stripped) if it can be a correlation id as given, else ``None`` (brief §8)."""
    given = (value or "").strip()
    return given if _CORRELATION_OK.fullmatch(given) else None


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or ``None`` if it is not a valid one."""
    match = _TRACEPARENT.fullmatch((traceparent or "").strip().lower())
    return match.group(1) if match and match.group(1) != "0" * 32 else None


def validate_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """Tags within the reference's limits: at most 50, key 1-128 chars, value at most 1024.

    Raises:
        InvalidArgument: names the offending key (truncated), never the whole value.
    """
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InvalidArgument("tags must be an object mapping strings to strings")
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags per connection (got {len(tags)})")
    out: dict[str, str] = {}
    for key, value in tags.items():
        out[validate_tag_key(key)] = validate_tag_value(key, value)
    return out


def validate_tag_key(key: object) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_TAG_KEY:
        raise InvalidArgument(f"a tag key is a string of 1-{MAX_TAG_KEY} characters")
    if not key.isprintable():
        raise InvalidArgument(f"tag key {key[:40]!r} contains control characters")
    return key


def validate_tag_value(key: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
        raise InvalidArgument(
            f"tag {key[:40]!r}: a value is a string of at most {MAX_TAG_VALUE} characters"
        )
    return value


def validate_topic(topic: object) -> str:
    """A pub/sub topic: non-empty, at most 256 characters, no whitespace or control characters.

    Raises:
        InvalidArgument: "Topic is required" for an empty one (the reference's message).
    """
    if not isinstance(topic, str) or not topic:
        raise InvalidArgument("Topic is required")
    if len(topic) > MAX_TOPIC:
        raise InvalidArgument(f"topic is longer than {MAX_TOPIC} characters")
    if any(c.isspace() or not c.isprintable() for c in topic):
        raise InvalidArgument("topic must not contain whitespace or control characters")
    return topic


def parse_tag_filters(pairs: Iterable[str | tuple[str, str]] | None) -> dict[str, str]:
    """List filters (AND semantics) from ``"key=value"`` strings or ``(key, value)`` pairs.

    Raises:
        InvalidArgument: a string without ``=``, a bad key, or one key asked with two values
            (which no record could match).
    """
    out: dict[str, str] = {}
    for pair in pairs or ():
        if isinstance(pair, str):
            key, eq, value = pair.partition("=")
            if not eq:
                raise InvalidArgument(f"tag filter {pair[:60]!r} must be key=value")
        else:
            key, value = pair
        key = validate_tag_key(key)
        value = validate_tag_value(key, value)
        if out.get(key, value) != value:
            raise InvalidArgument(f"tag filter {key[:40]!r} is given two different values")
        out[key] = value
    return out


def validate_timeout_ms(timeout_ms: object) -> int:
    """A correlated Send's ``timeout_ms``: an integer, 1 to 600000.

    Raises:
        InvalidArgument: anything else (booleans included).
    """
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
        raise InvalidArgument("timeout_ms must be an integer number of milliseconds")
    if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
        raise InvalidArgument(f"timeout_ms must be between 1 and {MAX_TIMEOUT_MS}")
    return timeout_ms
