"""The client's token discovery (the HTTP calls are covered end to end in tests/integration)."""

from __future__ import annotations

from pathlib import Path

from wsmanager.client import find_token


def test_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    assert find_token({"WSM_INTERNAL_TOKEN": " env "}, data_dir=tmp_path) == "env"


def test_token_file_of_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    assert find_token({}, data_dir=tmp_path) == "from-file"


def test_explicit_token_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere"
    path.write_text("explicit")
    assert find_token({}, path, data_dir=tmp_path / "none") == "explicit"


def test_nothing_found(tmp_path: Path) -> None:
    assert find_token({"WSM_INTERNAL_TOKEN": "  "}, data_dir=tmp_path) is None
    (tmp_path / "token").write_text("\n")
    assert find_token({}, data_dir=tmp_path) is None


def test_cli_and_client_agree_on_the_default_url() -> None:
    from wsmanager import cli, client

    assert cli.DEFAULT_URL == client.DEFAULT_URL == "http://127.0.0.1:5001"
