"""Strict value parsers, URL checks, redaction and layer readers behind :mod:`wsmanager.config`.

The parsers run as pydantic ``BeforeValidator``s: they turn a string from the environment or
the command line (or a JSON value from appsettings.json) into the field's type, or raise
``ValueError`` with a message that never repeats the value (it may be a secret).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field

from wsmanager.core.errors import ConfigError
from wsmanager.core.validation import redact_url as _redact_url

__all__ = [
    "Flag",
    "Int",
    "Name",
    "OptText",
    "Port",
    "Seconds",
    "Strings",
    "Text",
    "check_cors_origin",
    "check_http_url",
    "check_pubsub_url",
    "check_state_url",
    "check_target_host",
    "lookup",
    "read_appsettings",
    "redact_url",
]

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def parse_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError("expected an integer")


def parse_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        raise ValueError("expected a number (fractions allowed)")
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def parse_bool(value: object) -> bool:
    """Strict: true/false, 1/0, yes/no in any case (and JSON booleans); nothing else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError("expected true/false, 1/0 or yes/no")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value.strip()


def parse_text(value: object) -> str:
    return _text(value)


def parse_name(value: object) -> str:
    text = _text(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_optional(value: object) -> str | None:
    """``None`` and the empty string both mean "unset"."""
    return None if value is None else (_text(value) or None)


def parse_list(value: object) -> tuple[str, ...]:
    """A JSON list of strings, or a comma-separated string; blank items are dropped."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list ({exc.msg})") from None
        else:
            value = text.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings (JSON list or comma-separated)")
    return tuple(v.strip() for v in value if v.strip())


Int = Annotated[int, BeforeValidator(parse_int)]
Port = Annotated[int, BeforeValidator(parse_int), Field(ge=1, le=65535)]
Seconds = Annotated[float, BeforeValidator(parse_float)]
Flag = Annotated[bool, BeforeValidator(parse_bool)]
Text = Annotated[str, BeforeValidator(parse_text)]
Name = Annotated[str, BeforeValidator(parse_name)]
OptText = Annotated[str | None, BeforeValidator(parse_optional)]
Strings = Annotated[tuple[str, ...], BeforeValidator(parse_list)]


def _check_redis(url: str) -> None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a bad port") from None
    if not parts.hostname:
        raise ValueError("needs a host (redis://host:port/db)")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("port must be 1-65535")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError("database must be a number (redis://host:port/db)")


def check_state_url(url: str | None) -> str | None:
    """``sqlite:///path``, ``redis://host:port/db``, ``rediss://…``, ``memory://`` or ``dapr``."""
    if url is None or url.lower() == "dapr":
        return None if url is None else "dapr"
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss"):
        _check_redis(url)
    elif scheme == "sqlite":
        parts = urlsplit(url)
        if parts.netloc or parts.path in ("", "/"):
            raise ValueError("needs a file path (sqlite:///path)")
    elif scheme != "memory":
        raise ValueError(
            "unknown scheme (expected sqlite:///path, redis://host:port/db, rediss://…, "
            "memory:// or dapr)"
        )
    return url


def check_pubsub_url(url: str | None) -> str | None:
    """``inproc://``, ``redis://…``, ``rediss://…``, ``dapr`` or ``knative``."""
    if url is None or url.lower() in ("dapr", "knative"):
        return None if url is None else url.lower()
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss"):
        _check_redis(url)
    elif scheme != "inproc":
        raise ValueError(
            "unknown scheme (expected inproc://, redis://…, rediss://…, dapr or knative)"
        )
    return url


def check_http_url(url: str | None) -> str | None:
    if url is None:
        return url
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return url


def check_cors_origin(origins: tuple[str, ...]) -> tuple[str, ...]:
    """Each item is ``*`` or an origin ``scheme://host[:port]`` (no path, no trailing slash)."""
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if not parts.scheme or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
    return origins


def check_target_host(hosts: tuple[str, ...]) -> tuple[str, ...]:
    """Host entries, lower-cased; URLs and blanks inside an entry are refused."""
    for host in hosts:
        if "://" in host or any(c.isspace() for c in host):
            raise ValueError(f"{host!r} is not a host name or address")
    return tuple(host.lower() for host in hosts)


def redact_url(url: str) -> str:
    """A backend URL as ``wsm config`` shows it: user kept, password and secrets as ``***``."""
    return _redact_url(url, keep_user=True)


def _flatten(value: object, prefix: str, out: dict[str, object]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}:{key}" if prefix else str(key), out)
    elif value is not None:  # JSON null means "not set here"
        out[prefix] = value


def read_appsettings(path: Path) -> dict[str, object]:
    """Read appsettings.json and flatten nested objects to ``A:B:C`` keys (lists stay lists)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "must contain a JSON object")
    flat: dict[str, object] = {}
    _flatten(data, "", flat)
    return flat


def lookup(
    source: Mapping[str, object], key: str, aliases: Sequence[str] = (), *, is_list: bool = False
) -> tuple[bool, object]:
    """Find ``key`` in one layer: as written, with ``:`` as ``__``, then under ``aliases``.

    List settings may also be given .NET-style item by item (``Key__0``, ``Key__1``, …).
    """
    env_key = key.replace(":", "__")
    for name in (key, env_key, *aliases):
        if name in source:
            return True, source[name]
    if is_list:
        items: list[object] = []
        while (found := _indexed(source, key, env_key, len(items))) is not None:
            items.append(found)
        if items:
            return True, items
    return False, None


def _indexed(source: Mapping[str, object], key: str, env_key: str, index: int) -> object | None:
    for name in (f"{key}:{index}", f"{env_key}__{index}"):
        if name in source:
            return source[name]
    return None
