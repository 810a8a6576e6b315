"""The ``wsm`` command.

Each subcommand is registered by one small function ``_register_<name>(parser)`` that adds its
arguments and sets ``handler`` (``(args, environ) -> exit code``); :data:`COMMANDS` lists every
planned subcommand in order. A subcommand without a registrar yet is listed in ``--help`` and
refuses to run. Subcommands that need settings call :func:`add_config_arguments` and
:func:`load_settings`; a :class:`~wsmanager.core.errors.ConfigError` from any handler is printed
as ``wsm: configuration error: <key>: <message>`` and exits with 1 (reference behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wsmanager import __version__
from wsmanager._config_table import extra, named_fields
from wsmanager.config import Settings, format_value
from wsmanager.core.errors import ConfigError

__all__ = ["COMMANDS", "Command", "add_config_arguments", "build_parser", "load_settings", "main"]

Handler = Callable[[argparse.Namespace, Mapping[str, str]], int]
Registrar = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    summary: str
    register: Registrar | None = None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--appsettings``, repeatable ``--set KEY=VALUE`` and the dedicated flags of the table."""
    group = parser.add_argument_group("configuration (appsettings -> environment -> these)")
    group.add_argument("--appsettings", metavar="PATH", help="appsettings.json to read first")
    group.add_argument(
        "--set",
        dest="config_set",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="override one setting by key, e.g. --set Cors:AllowedOrigins=https://a.example",
    )
    for name, key, info in named_fields(Settings):
        if flags := extra(info, "cli"):
            group.add_argument(*flags, dest=f"config_{name}", metavar="VALUE", help=f"sets {key}")


def load_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Settings from ``--appsettings``, ``environ``, ``--set`` and then the dedicated flags."""
    overrides = dict(getattr(args, "config_set", []))
    for name, key, _ in named_fields(Settings):
        value = getattr(args, f"config_{name}", None)
        if value is not None:
            overrides[key] = value
    return Settings.load(
        environ=environ, appsettings_path=getattr(args, "appsettings", None), overrides=overrides
    )


def _register_config(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run_config)


def _run_config(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = load_settings(args, environ)
    for notice in settings.notices:
        print(f"wsm: note: {notice}", file=sys.stderr)
    shown = settings.redacted()
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    width = max(map(len, shown))
    for key, value in shown.items():
        print(f"{key:<{width}}  {format_value(value)}")
    return 0


#: Every planned subcommand, in the order ``--help`` lists them. To implement one, write
#: ``_register_<name>(parser)`` (arguments + ``parser.set_defaults(handler=...)``) and put it here.
COMMANDS: dict[str, Command] = {
    "serve": Command(
        "run a complete local system in one process (holder, functions, SQLite, in-process pub/sub)"
    ),
    "holder": Command("run one production holder"),
    "connect": Command("open a managed outbound WebSocket connection"),
    "list": Command("list connections (filter by tags)"),
    "send": Command("send a correlated request and print the reply"),
    "send-raw": Command("send a message as is, without waiting for a reply"),
    "publish": Command("start publishing a connection's inbound frames to a topic"),
    "unpublish": Command("stop publishing a connection's inbound frames"),
    "disconnect": Command("close a connection"),
    "tail": Command("print the messages published on a topic"),
    "config": Command("print the effective configuration (secrets redacted)", _register_config),
}


def _not_implemented(name: str) -> Handler:
    def handler(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        print(f"wsm: '{name}' is not implemented yet", file=sys.stderr)
        return 2

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsm",
        description="wsmanager: a WebSocket connection manager for services on Kubernetes.",
        add_help=False,
    )
    parser.add_argument("-h", "-?", "--help", action="help", help="show this help and exit")
    parser.add_argument("--version", action="version", version=f"wsm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        summary = command.summary + ("" if command.register else " (not implemented yet)")
        sub = subparsers.add_parser(name, help=summary, description=summary)
        if command.register is None:
            sub.set_defaults(handler=_not_implemented(name))
        else:
            command.register(sub)
    return parser


def main(argv: list[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run ``wsm``; returns the exit code (``environ`` defaults to ``os.environ``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler: Handler = args.handler
    try:
        return handler(args, os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"wsm: configuration error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
