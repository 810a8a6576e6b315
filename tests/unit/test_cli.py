"""The ``wsm`` command: help, version, ``wsm config`` and configuration errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsmanager import __version__
from wsmanager.cli import COMMANDS, main
from wsmanager.config import Settings

PLANNED = [
    "serve",
    "holder",
    "connect",
    "list",
    "send",
    "send-raw",
    "publish",
    "unpublish",
    "disconnect",
    "tail",
    "config",
]


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    code = main(list(argv), environ=env or {})
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_planned_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(COMMANDS) == PLANNED
    for flag in ("--help", "-h", "-?"):
        code, out, _ = run(capsys, flag)
        assert code == 0
        assert all(name in out for name in PLANNED)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and __version__ in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 2  # no subcommand
    assert run(capsys, "config", "--set", "no-equals-sign")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2


def test_every_planned_subcommand_is_implemented() -> None:
    assert [n for n, c in COMMANDS.items() if c.register is None] == []


def test_config_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config")
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if len(line.split(None, 1)) == 2)
    assert lines["HttpPort"] == "5001" and lines["CLEAR_ALL_ON_START"] == "false"


def test_config_layers_and_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    app = tmp_path / "appsettings.json"
    app.write_text(json.dumps({"Logging": {"LogLevel": {"Default": "Error"}}, "HttpPort": 6000}))
    argv = ["config", "--json", "--appsettings", str(app), "--set", "HttpPort=6001", "-g", "6100"]
    code, out, _ = run(capsys, *argv, env={"GrpcPort": "6050"})
    shown = json.loads(out)
    assert code == 0
    assert (shown["HttpPort"], shown["GrpcPort"]) == (6001, 6100)
    assert shown["Logging:LogLevel:Default"] == "Error"
    # A dedicated flag beats --set for the same key.
    code, out, _ = run(capsys, "config", "--json", "--set", "HttpPort=1", "--http-port", "2")
    assert json.loads(out)["HttpPort"] == 2


def test_config_never_prints_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "WSM_INTERNAL_TOKEN": "tok-very-secret",
        "WSM_STATE_URL": "redis://:pw-state@h:6379/0",
        "K_SINK": "https://user:pw-sink@broker",
    }
    for argv in (["config"], ["config", "--json"]):
        code, out, err = run(capsys, *argv, env=env)
        assert code == 0
        for secret in ("tok-very-secret", "pw-state", "pw-sink"):
            assert secret not in out + err
        assert "redis://:***@h:6379/0" in out


def test_config_error_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "config", "--set", "HttpPort=5002")
    assert code == 1 and out == ""
    assert err.startswith("wsm: configuration error: GrpcPort: must differ from HttpPort")
    code, _, err = run(capsys, "config", env={"CLEAR_ALL_ON_START": "sure"})
    assert code == 1 and err.startswith("wsm: configuration error: CLEAR_ALL_ON_START: ")
    code, _, err = run(capsys, "config", "--set", "Nope=1")
    assert code == 1 and "Nope: unknown setting" in err


def test_config_notes_a_clamped_ttl(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "config", "--json", env={"CONNECTION_RECORD_TTL_SECONDS": "1"})
    assert code == 0 and json.loads(out)["CONNECTION_RECORD_TTL_SECONDS"] == 30
    assert "wsm: note: CONNECTION_RECORD_TTL_SECONDS" in err


def _wsm_command() -> list[str]:
    script = Path(sys.executable).parent / "wsm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsmanager.cli"]


@pytest.mark.parametrize(
    "command", [_wsm_command(), [sys.executable, "-m", "wsmanager.cli"]], ids=["script", "module"]
)
def test_installed_command_help(command: list[str]) -> None:
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in PLANNED)


# -- wsm holder / wsm serve: backends when a Dapr sidecar is present ---------------------------


def _started_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *argv: str, env: dict[str, str]
) -> Settings:
    """Run ``wsm <argv>`` up to the point where it would serve; return its settings."""
    import wsmanager.cli as cli

    seen: list[Settings] = []

    def start(settings: Settings, *args: object, **kwargs: object) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli, "_start", start)
    monkeypatch.chdir(tmp_path)  # wsm serve writes its token under ./.wsm
    assert main(list(argv), environ=env) == 0
    return seen[0]


def test_wsm_holder_uses_the_dapr_sidecar_when_backends_are_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {"WSM_INTERNAL_TOKEN": "t", "DAPR_GRPC_PORT": "50011", "DAPR_HTTP_PORT": "3511"}
    settings = _started_with(monkeypatch, tmp_path, "holder", env=env)
    assert (settings.state_url, settings.pubsub_url) == ("dapr", "dapr")
    assert (settings.dapr_grpc_port, settings.dapr_http_port) == (50011, 3511)
    env["WSM_PUBSUB_URL"] = "inproc://"
    assert _started_with(monkeypatch, tmp_path, "holder", env=env).pubsub_url == "inproc://"


def test_wsm_holder_without_a_sidecar_still_requires_backends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "holder", env={"WSM_INTERNAL_TOKEN": "t"})
    assert code == 1 and "WSM_STATE_URL: required by wsm holder" in err


def test_wsm_serve_keeps_its_defaults_beside_a_sidecar(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {"DAPR_GRPC_PORT": "50001", "DAPR_HTTP_PORT": "3500"}
    settings = _started_with(monkeypatch, tmp_path, "serve", env=env)
    assert settings.state_url is not None and settings.state_url.startswith("sqlite:///")
    assert settings.pubsub_url == "inproc://"
