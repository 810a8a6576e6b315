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
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsmanager import __version__
from wsmanager._config_table import extra, named_fields
from wsmanager.config import Settings, effective_backends, format_value
from wsmanager.core.errors import ConfigError, WsmError

if TYPE_CHECKING:
    from wsmanager.client import WsmClient

#: The holder URL client subcommands talk to unless told otherwise (HttpPort's default).
DEFAULT_URL = "http://127.0.0.1:5001"

__all__ = [
    "COMMANDS",
    "Command",
    "add_config_arguments",
    "build_parser",
    "cli_overrides",
    "load_settings",
    "main",
]

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


def cli_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The settings given on the command line: ``--set`` and then the dedicated flags."""
    overrides = dict(getattr(args, "config_set", []))
    for name, key, _ in named_fields(Settings):
        value = getattr(args, f"config_{name}", None)
        if value is not None:
            overrides[key] = value
    return overrides


def load_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Settings from ``--appsettings``, ``environ``, ``--set`` and then the dedicated flags."""
    overrides = cli_overrides(args)
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


# -- running a holder -------------------------------------------------------------------------


def _register_serve(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--data-dir", default=".wsm", help="SQLite state and the token file (default ./.wsm)"
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="run N holder processes (wsm-1..wsm-N on HttpPort..HttpPort+N-1) sharing the "
        "state and token; kill one and watch the others take over",
    )
    parser.set_defaults(handler=_run_serve)


def _register_holder(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.set_defaults(handler=_run_holder)


def _start(
    settings: Settings, host: str, token: str, banner: list[str], *, functions: bool = False
) -> int:
    from wsmanager.holder.bootstrap import configure_logging, run_holder

    for notice in settings.notices:
        print(f"wsm: note: {notice}", file=sys.stderr)
    configure_logging(settings)

    def on_listening(url: str) -> None:
        print(f"wsm: listening on {url}", *banner, sep="\n  ", flush=True)

    try:
        run_holder(settings, host=host, token=token, on_listening=on_listening, functions=functions)
    except (WsmError, OSError) as exc:
        if isinstance(exc, ConfigError):
            raise
        text = f"{exc.code}: {exc.message}" if isinstance(exc, WsmError) else str(exc)
        print(f"wsm: start-up failed: {text}", file=sys.stderr)
        return 1
    return 0


def _run_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from wsmanager.holder.bootstrap import ensure_token, serve_settings

    data_dir = Path(args.data_dir)
    settings = serve_settings(load_settings(args, environ), data_dir)
    secret = settings.internal_token
    token = secret.get_secret_value() if secret is not None else ensure_token(data_dir)
    where = "WSM_INTERNAL_TOKEN" if secret is not None else str(data_dir / "token")
    banner = [
        f"state:  {format_value(settings.redacted()['WSM_STATE_URL'])}",
        f"pubsub: {settings.pubsub_url}",
        f"token:  {where}",
    ]
    count = getattr(args, "instances", 1)
    if count != 1:
        from wsmanager.holder.instances import run_instances, serve_argv

        return run_instances(
            settings,
            count=count,
            base_argv=serve_argv(data_dir, args.host, args.appsettings),
            overrides=cli_overrides(args),
            environ=environ,
            banner=banner,
        )
    banner.append("functions: POST /functions/<name> (CloudEvents or JSON)")
    return _start(settings, args.host, token, banner, functions=True)


def _run_holder(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # In a Dapr-enabled pod the sidecar's backends are the default (``wsm serve`` keeps its own).
    settings = effective_backends(load_settings(args, environ), environ)
    if settings.internal_token is None:
        raise ConfigError("WSM_INTERNAL_TOKEN", "required: wsm holder refuses to start without it")
    for key, value in (
        ("WSM_STATE_URL", settings.state_url),
        ("WSM_PUBSUB_URL", settings.pubsub_url),
    ):
        if value is None:
            raise ConfigError(key, "required by wsm holder")
    return _start(settings, args.host, settings.internal_token.get_secret_value(), [])


# -- client subcommands -------------------------------------------------------------------------

ClientCall = Callable[["WsmClient", argparse.Namespace], Awaitable[Any]]


def _client_command(parser: argparse.ArgumentParser, call: ClientCall) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"holder URL (default {DEFAULT_URL})")
    parser.add_argument(
        "--token-file", help="token file (default: $WSM_INTERNAL_TOKEN, else ./.wsm/token)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the full JSON answer")
    parser.set_defaults(handler=_client_handler(call))


def _client_handler(call: ClientCall) -> Handler:
    def handler(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        from wsmanager.client import WsmClient, find_token

        async def run() -> Any:
            token = find_token(environ, args.token_file)
            async with WsmClient(args.url, token, timeout=args.timeout) as client:
                return await call(client, args)

        try:
            result = asyncio.run(run())
        except WsmError as exc:
            print(f"wsm: {exc.details.get('code', exc.code)}: {exc.message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        if result is not None:
            print(result if isinstance(result, str) else json.dumps(result, indent=2))
        return 0

    return handler


def _message(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


async def _connect(client: WsmClient, args: argparse.Namespace) -> Any:
    answer = await client.connect(
        args.ws_url,
        tags=dict(args.tag),
        auto_reconnect=args.auto_reconnect,
        content_type=args.content_type,
    )
    return answer if args.json else answer["connection_id"]


async def _list(client: WsmClient, args: argparse.Namespace) -> Any:
    records = await client.list(dict(args.filters))
    if args.json:
        return records
    lines = [f"{r['id']}  {r['status']:<12}  {r['url']}  {r['topic'] or '-'}" for r in records]
    return "\n".join(lines) if lines else None


async def _send(client: WsmClient, args: argparse.Namespace) -> Any:
    answer = await client.send(
        args.id, _message(args.message), content_type=args.content_type, timeout_ms=args.timeout_ms
    )
    return answer if args.json else answer["response"]


async def _send_raw(client: WsmClient, args: argparse.Namespace) -> Any:
    await client.send_raw(args.id, _message(args.message), content_type=args.content_type)
    return {} if args.json else None


async def _publish(client: WsmClient, args: argparse.Namespace) -> Any:
    record = await client.start_publish(args.id, args.topic)
    return record if args.json else None


async def _unpublish(client: WsmClient, args: argparse.Namespace) -> Any:
    record = await client.stop_publish(args.id)
    return record if args.json else None


async def _disconnect(client: WsmClient, args: argparse.Namespace) -> Any:
    await client.disconnect(args.id)
    return {} if args.json else None


async def _tail(client: WsmClient, args: argparse.Namespace) -> Any:
    def subscribed() -> None:
        print(f"wsm: tailing {args.topic}", file=sys.stderr, flush=True)

    async for event in client.tail(args.topic, limit=args.count, on_subscribed=subscribed):
        if event.get("type") == "overflow":
            print(f"wsm: fell behind, lost {event['dropped']} events", file=sys.stderr)
            continue
        print(json.dumps(event) if args.json else event["data"], flush=True)
    return None


def _register_connect(parser: argparse.ArgumentParser) -> None:
    _client_command(parser, _connect)
    parser.add_argument("ws_url", metavar="URL", help="ws:// or wss:// URL")
    parser.add_argument("--tag", metavar="KEY=VALUE", type=_key_value, action="append", default=[])
    parser.add_argument("--auto-reconnect", action="store_true")
    parser.add_argument("--content-type", help="default content type of the connection")


def _register_list(parser: argparse.ArgumentParser) -> None:
    _client_command(parser, _list)
    parser.add_argument(
        "filters", metavar="KEY=VALUE", type=_key_value, nargs="*", help="tag filters (AND)"
    )


def _register_send(parser: argparse.ArgumentParser, raw: bool = False) -> None:
    _client_command(parser, _send_raw if raw else _send)
    parser.add_argument("id", help="connection id")
    parser.add_argument("message", help="text, or base64 for binary content types; - for stdin")
    parser.add_argument("--content-type", help="default: the connection's")
    if not raw:
        parser.add_argument("--timeout-ms", type=int, help="reply timeout (default 10000)")


def _register_send_raw(parser: argparse.ArgumentParser) -> None:
    _register_send(parser, raw=True)


def _register_id_command(call: ClientCall, *extra_args: str) -> Registrar:
    def register(parser: argparse.ArgumentParser) -> None:
        _client_command(parser, call)
        parser.add_argument("id", help="connection id")
        for name in extra_args:
            parser.add_argument(name)

    return register


def _register_tail(parser: argparse.ArgumentParser) -> None:
    _client_command(parser, _tail)
    parser.add_argument("topic", help="topic to watch ('*': every topic)")
    parser.add_argument("--count", type=int, help="stop after this many messages")


#: Every planned subcommand, in the order ``--help`` lists them. To implement one, write
#: ``_register_<name>(parser)`` (arguments + ``parser.set_defaults(handler=...)``) and put it here.
COMMANDS: dict[str, Command] = {
    "serve": Command(
        "run a complete local system in one process "
        "(holder, functions, SQLite, in-process pub/sub)",
        _register_serve,
    ),
    "holder": Command("run one production holder", _register_holder),
    "connect": Command("open a managed outbound WebSocket connection", _register_connect),
    "list": Command("list connections (filter by tags)", _register_list),
    "send": Command("send a correlated request and print the reply", _register_send),
    "send-raw": Command("send a message as is, without waiting for a reply", _register_send_raw),
    "publish": Command(
        "start publishing a connection's inbound frames to a topic",
        _register_id_command(_publish, "topic"),
    ),
    "unpublish": Command(
        "stop publishing a connection's inbound frames", _register_id_command(_unpublish)
    ),
    "disconnect": Command("close a connection", _register_id_command(_disconnect)),
    "tail": Command("print the messages published on a topic", _register_tail),
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
