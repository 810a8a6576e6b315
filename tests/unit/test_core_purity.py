"""The core is pure: no I/O imports, no clock reads, no environment reads (functional core)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wsmanager.core

CORE = Path(wsmanager.core.__file__).parent
FORBIDDEN_MODULES = {
    "asyncio",
    "aiohttp",
    "redis",
    "dapr",
    "socket",
    "time",
    "os",
    "subprocess",
    "sqlite3",
    "aiosqlite",
    "grpc",
    "threading",
    "select",
    "selectors",
    "urllib.request",
    "http",
    "random",
    "secrets",
    "uuid",
    "datetime",
    "pathlib",
    "io",
    "functions_framework",
    "cloudevents",
}


def core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert files, "the core package has no modules?"
    return files


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN_MODULES)


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = sorted(m for m in imported_modules(tree) if forbidden(m))
    assert not bad, f"{path.name} imports I/O modules: {bad}"
    dunder = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "__import__"
    ]
    assert not dunder, f"{path.name} calls __import__"


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_reads_no_environment_or_clock(path: Path) -> None:
    source = path.read_text()
    for needle in ("environ", "getenv", "time.time", "monotonic", "datetime.now", "open("):
        assert needle not in source, f"{path.name} mentions {needle!r}"


def test_the_checker_catches_a_planted_import() -> None:
    tree = ast.parse("import asyncio\nfrom redis.asyncio import Redis\nfrom . import model\n")
    assert {m for m in imported_modules(tree) if forbidden(m)} == {"asyncio", "redis.asyncio"}
