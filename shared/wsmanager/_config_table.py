"""Field metadata and table rendering behind :mod:`wsmanager.config`.

A setting is a pydantic field made by :func:`setting`: its alias is the setting's key, its
``json_schema_extra`` holds the CLI flags, extra environment names, the default as shown, a range
note and how to redact it. :func:`table_rows` turns a model's fields into the settings table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr
from pydantic.fields import FieldInfo

from wsmanager._config_parse import redact_url

__all__ = [
    "extra",
    "format_value",
    "markdown",
    "named_fields",
    "setting",
    "shown",
    "table_rows",
]


def setting(
    default: Any,
    key: str,
    description: str,
    *,
    cli: tuple[str, ...] = (),
    env: tuple[str, ...] = (),
    default_text: str | None = None,
    note: str | None = None,
    redact: Literal["url", "all"] | None = None,
    **constraints: Any,
) -> Any:
    """One row of the settings table, as a pydantic field (``alias`` is the setting's key).

    ``env`` names extra environment variables, ``default_text`` replaces the default in the
    table, ``note`` adds to the range column, ``redact`` hides a URL's password or all of it.
    """
    meta: dict[str, Any] = {"cli": list(cli), "env": list(env)}
    for name, value in (("default_text", default_text), ("note", note), ("redact", redact)):
        if value:
            meta[name] = value
    return Field(default, alias=key, description=description, json_schema_extra=meta, **constraints)


def extra(info: FieldInfo, name: str) -> Any:
    """One item of a field's ``json_schema_extra`` (``None`` when absent)."""
    data = info.json_schema_extra
    return data.get(name) if isinstance(data, dict) else None


def named_fields(model: type[BaseModel]) -> Iterator[tuple[str, str, FieldInfo]]:
    """``(attribute, key, field)`` for every field that is a setting (has an alias)."""
    for name, info in model.model_fields.items():
        if info.alias is not None:
            yield name, info.alias, info


def shown(info: FieldInfo, value: Any) -> Any:
    """A value as it may be displayed: secrets redacted, tuples as lists."""
    redact = extra(info, "redact")
    if isinstance(value, SecretStr) or (redact == "all" and value is not None):
        return "***"
    if redact == "url" and isinstance(value, str):
        return redact_url(value)
    return list(value) if isinstance(value, tuple) else value


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return "list of strings"
    names = {int: "integer", float: "number", bool: "boolean", str: "string", SecretStr: "secret"}
    parts = [names.get(a, getattr(a, "__name__", str(a))) for a in (args or (annotation,))]
    return " or ".join("unset" if p == "NoneType" else p for p in parts)


def _range_text(info: FieldInfo) -> str:
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    bounds = {op: getattr(m, op) for m in info.metadata for op in ops if hasattr(m, op)}
    if "ge" in bounds and "le" in bounds:
        text = f"{bounds['ge']}–{bounds['le']}"
    else:
        text = ", ".join(f"{ops[op]} {value}" for op, value in bounds.items())
    return "; ".join(t for t in (text, extra(info, "note")) if t)


def table_rows(model: type[BaseModel]) -> list[dict[str, str]]:
    """One row per setting: key, attribute, env, cli, type, default, range, description."""
    rows = []
    for name, key, info in named_fields(model):
        default = extra(info, "default_text") or shown(info, info.default)
        env_names = [key.replace(":", "__"), *extra(info, "env")]
        rows.append(
            {
                "key": key,
                "attribute": name,
                "env": ", ".join(env_names),
                "cli": ", ".join([*extra(info, "cli"), f"--set {key}=…"]),
                "type": _type_text(info.annotation),
                "default": default if isinstance(default, str) else format_value(default),
                "range": _range_text(info),
                "description": info.description or "",
            }
        )
    return rows


def format_value(value: Any) -> str:
    """A displayed value (see :meth:`Settings.redacted`) as short text."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) or value == "":
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, str]]) -> str:
    """The settings table as Markdown, for the README."""
    cols = ("key", "env", "cli", "type", "default", "range", "description")
    lines = ["| " + " | ".join(c.capitalize() for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"`{row['key']}`", *(row[c] for c in cols[1:])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
