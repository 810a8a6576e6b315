"""Settings: defaults, layering, strict parsing, cross-checks, redaction and the table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from wsmanager.config import (
    Settings,
    effective_backends,
    redact_url,
    settings_markdown,
    settings_table,
)
from wsmanager.core.errors import ConfigError
from wsmanager.core.ownership import LivenessPolicy


def load(
    env: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
    appsettings: Path | None = None,
) -> Settings:
    return Settings.load(environ=env or {}, overrides=overrides, appsettings_path=appsettings)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def config_error(**kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    return info.value


def test_defaults() -> None:
    s = load()
    assert (s.http_port, s.grpc_port, s.dapr_http_port, s.dapr_grpc_port) == (
        5001,
        5002,
        3500,
        50001,
    )
    assert s.cors_allowed_origins == () and s.allowed_target_hosts == ()
    assert (s.log_level, s.pubsub_name, s.state_store_name) == (
        "Information",
        "pubsub",
        "statestore",
    )
    assert s.instance_id is None
    assert (s.heartbeat_interval, s.discovery_interval, s.stale_threshold) == (10, 30, 60)
    assert (s.reclaim_interval, s.stale_connection_ttl, s.connection_record_ttl) == (30, 60, 300)
    assert s.clear_all_on_start is False
    assert s.state_url is None and s.pubsub_url is None and s.k_sink is None
    assert s.http_host == "127.0.0.1" and s.internal_token is None and s.key_prefix == ""
    assert (s.reconnect_max_attempts, s.reconnect_base_delay_ms, s.max_reconnect_delay_ms) == (
        5,
        1000,
        30000,
    )
    assert (s.default_timeout_ms, s.max_message_bytes, s.send_queue_size) == (10000, 1 << 20, 1000)
    assert s.websocket_compression is False and s.websocket_heartbeat == 20
    assert s.notices == ()
    assert s == Settings()  # the model's own defaults agree with load() on an empty environment


def test_environment_is_a_parameter_not_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HttpPort", "7000")
    assert load().http_port == 5001


def test_each_layer_overrides_the_previous(tmp_path: Path) -> None:
    app = write_json(tmp_path / "appsettings.json", {"HttpPort": 6000, "GrpcPort": 6100})
    assert load(appsettings=app).http_port == 6000
    assert load({"HttpPort": "6001"}, appsettings=app).http_port == 6001
    s = load({"HttpPort": "6001"}, {"HttpPort": "6002"}, app)
    assert (s.http_port, s.grpc_port) == (6002, 6100)  # untouched keys fall through


def test_nested_appsettings_flatten(tmp_path: Path) -> None:
    data = {
        "Cors": {"AllowedOrigins": ["https://a.example", "http://b.example:8080"]},
        "Logging": {"LogLevel": {"Default": "Warning", "Microsoft.AspNetCore": "Error"}},
        "SomethingElse": {"Ignored": True},
        "K_SINK": None,  # null means "not set here"
    }
    s = load(appsettings=write_json(tmp_path / "a.json", data))
    assert s.cors_allowed_origins == ("https://a.example", "http://b.example:8080")
    assert s.log_level == "Warning" and s.python_log_level == logging.WARNING


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"Cors__AllowedOrigins": '["https://a.example", "https://b.example"]'}, 2),
        ({"Cors__AllowedOrigins": "https://a.example, https://b.example,"}, 2),
        ({"Cors__AllowedOrigins__0": "https://a.example", "Cors__AllowedOrigins__1": "*"}, 2),
        ({"Cors:AllowedOrigins": "https://a.example"}, 1),
        ({"Cors__AllowedOrigins": ""}, 0),
        ({"Cors__AllowedOrigins": "[]"}, 0),
    ],
)
def test_cors_from_environment(env: dict[str, str], expected: int) -> None:
    assert len(load(env).cors_allowed_origins) == expected


def test_list_setting_on_the_command_line() -> None:
    s = load(overrides={"AllowedTargetHosts": "LocalHost,10.0.0.5"})
    assert s.allowed_target_hosts == ("localhost", "10.0.0.5")


@pytest.mark.parametrize("text", ["true", "TRUE", "True", "1", "yes", "YES", " yes "])
def test_bool_true(text: str) -> None:
    assert load({"CLEAR_ALL_ON_START": text}).clear_all_on_start is True


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no", "No"])
def test_bool_false(text: str) -> None:
    assert load({"CLEAR_ALL_ON_START": text}).clear_all_on_start is False


@pytest.mark.parametrize("text", ["on", "off", "y", "n", "2", "", "truthy", "-1"])
def test_bool_strict(text: str) -> None:
    assert config_error(env={"CLEAR_ALL_ON_START": text}).key == "CLEAR_ALL_ON_START"


@pytest.mark.parametrize(
    ("text", "expected", "noticed"),
    [
        ("5", 30, True),
        ("-1", 30, True),
        ("99999", 3600, True),
        ("300", 300, False),
        ("30", 30, False),
    ],
)
def test_record_ttl_is_clamped(text: str, expected: int, noticed: bool) -> None:
    s = load({"CONNECTION_RECORD_TTL_SECONDS": text})
    assert s.connection_record_ttl == expected
    assert bool(s.notices) is noticed
    if noticed:
        assert "CONNECTION_RECORD_TTL_SECONDS" in s.notices[0]


def test_direct_construction_rejects_out_of_range_ttl() -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({"CONNECTION_RECORD_TTL_SECONDS": 5})


def test_fractional_intervals() -> None:
    env = {
        "INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "0.1",
        "INSTANCE_DISCOVERY_INTERVAL_SECONDS": "0.2",
        "INSTANCE_STALE_THRESHOLD_SECONDS": "0.5",
        "RECLAIM_INTERVAL_SECONDS": ".25",
        "STALE_CONNECTION_TTL_SECONDS": "0.75",
        "WebSocketHeartbeatSeconds": "1.5",
    }
    s = load(env)
    assert (s.heartbeat_interval, s.discovery_interval, s.stale_threshold) == (0.1, 0.2, 0.5)
    assert (s.reclaim_interval, s.stale_connection_ttl, s.websocket_heartbeat) == (0.25, 0.75, 1.5)
    assert s.liveness_policy() == LivenessPolicy(0.1, 0.5, 0.75)


def test_heartbeat_interval_zero_disables_heartbeats() -> None:
    s = load({"INSTANCE_HEARTBEAT_INTERVAL_SECONDS": "0", "INSTANCE_STALE_THRESHOLD_SECONDS": "1"})
    assert s.heartbeat_interval == 0
    assert s.liveness_policy().heartbeats_enabled is False


@pytest.mark.parametrize("threshold", ["10", "9.5", "1"])
def test_stale_threshold_must_exceed_heartbeat_interval(threshold: str) -> None:
    env = {"INSTANCE_STALE_THRESHOLD_SECONDS": threshold}
    assert config_error(env=env).key == "INSTANCE_STALE_THRESHOLD_SECONDS"


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ({"HttpPort": "5002"}, 5002),
        ({"GrpcPort": "5001"}, 5001),
        ({"HttpPort": "9", "GrpcPort": "9"}, 9),
    ],
)
def test_port_collision(env: dict[str, str], port: int) -> None:
    err = config_error(env=env)
    assert err.key == "GrpcPort" and f"both {port}" in err.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("HttpPort", "abc"),
        ("HttpPort", "0"),
        ("HttpPort", "65536"),
        ("HttpPort", "5001.5"),
        ("GrpcPort", "-1"),
        ("DaprHttpPort", "70000"),
        ("DaprGrpcPort", ""),
        ("Logging:LogLevel:Default", "Verbose"),
        ("pubsubName", "  "),
        ("stateStoreName", ""),
        ("Cors:AllowedOrigins", "https://a.example/"),
        ("Cors:AllowedOrigins", "[1, 2]"),
        ("Cors:AllowedOrigins", "[not json"),
        ("AllowedTargetHosts", "https://a.example"),
        ("INSTANCE_HEARTBEAT_INTERVAL_SECONDS", "-1"),
        ("INSTANCE_HEARTBEAT_INTERVAL_SECONDS", "nan"),
        ("INSTANCE_DISCOVERY_INTERVAL_SECONDS", "0"),
        ("INSTANCE_STALE_THRESHOLD_SECONDS", "soon"),
        ("RECLAIM_INTERVAL_SECONDS", "0"),
        ("STALE_CONNECTION_TTL_SECONDS", "inf"),
        ("CONNECTION_RECORD_TTL_SECONDS", "1.5"),
        ("WSM_STATE_URL", "postgres://db/x"),
        ("WSM_STATE_URL", "sqlite://"),
        ("WSM_STATE_URL", "redis://h:99999/0"),
        ("WSM_STATE_URL", "redis://h:6379/zero"),
        ("WSM_STATE_URL", "redis:///0"),
        ("WSM_PUBSUB_URL", "kafka://broker"),
        ("K_SINK", "ftp://sink"),
        ("WSM_HTTP_HOST", "http://10.0.0.1"),
        ("ReconnectMaxAttempts", "-1"),
        ("ReconnectBaseDelayMs", "0"),
        ("MaxReconnectDelayMs", "500"),
        ("DefaultTimeoutMs", "0"),
        ("MaxMessageBytes", "1MiB"),
        ("SendQueueSize", "0"),
        ("WebSocketCompression", "maybe"),
        ("WebSocketHeartbeatSeconds", "-5"),
    ],
)
def test_bad_value_names_its_key(key: str, value: str) -> None:
    err = config_error(env={key.replace(":", "__"): value})
    assert err.key == key
    assert str(err).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("value", "key"), [(True, "HttpPort"), (1.5, "HttpPort"), (5, "pubsubName")]
)
def test_wrong_json_types_in_appsettings(tmp_path: Path, value: Any, key: str) -> None:
    app = write_json(tmp_path / "a.json", {key: value})
    assert config_error(appsettings=app).key == key


def test_appsettings_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert config_error(appsettings=missing).key == str(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    assert "invalid JSON" in config_error(appsettings=broken).message
    assert "JSON object" in config_error(appsettings=write_json(tmp_path / "l.json", [])).message


def test_unknown_override_is_rejected_with_a_hint() -> None:
    err = config_error(overrides={"httpport": "1"})
    assert err.key == "httpport" and "HttpPort" in err.message
    assert load(overrides={"Logging__LogLevel__Default": "debug"}).log_level == "Debug"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///tmp/wsm.db",
        "redis://localhost:6379/0",
        "rediss://:pw@h:6380",
        "memory://",
        "dapr",
    ],
)
def test_state_urls(url: str) -> None:
    assert load({"WSM_STATE_URL": url}).state_url == url


def test_pubsub_urls_and_knative_needs_k_sink() -> None:
    for url in ("inproc://", "redis://h:6379/0", "dapr"):
        assert load({"WSM_PUBSUB_URL": url}).pubsub_url == url
    assert config_error(env={"WSM_PUBSUB_URL": "knative"}).key == "K_SINK"
    s = load({"WSM_PUBSUB_URL": "knative", "K_SINK": "http://broker.default.svc"})
    assert s.k_sink == "http://broker.default.svc"


def test_instance_id_and_advertised_host() -> None:
    assert load({"HOSTNAME": ""}).instance_id is None
    assert load({"HOSTNAME": "wsm-holder-0"}).instance_id == "wsm-holder-0"
    assert load({"POD_IP": "10.1.2.3"}).advertised_endpoint() == "http://10.1.2.3:5001"
    assert load({"POD_IP": "10.1.2.3", "WSM_HTTP_HOST": "holder"}).http_host == "holder"
    assert load({"POD_IP": "fd00::7"}).advertised_endpoint() == "http://[fd00::7]:5001"


def test_dapr_sidecar_variables_are_accepted() -> None:
    assert load({"DAPR_HTTP_PORT": "3600"}).dapr_http_port == 3600
    assert load({"DAPR_HTTP_PORT": "3600", "DaprHttpPort": "3700"}).dapr_http_port == 3700


def test_log_level_is_case_insensitive() -> None:
    s = load({"Logging__LogLevel__Default": "trace"})
    assert s.log_level == "Trace" and s.python_log_level < logging.DEBUG


def test_frozen() -> None:
    s = load()
    with pytest.raises(ValidationError):
        s.http_port = 1  # type: ignore[misc]
    assert hash(s) == hash(load())


def test_redaction() -> None:
    env = {
        "WSM_INTERNAL_TOKEN": "tok-very-secret",
        "WSM_STATE_URL": "redis://:pw-state@h:6379/0",
        "WSM_PUBSUB_URL": "rediss://user:pw-pubsub@h:6380",
    }
    s = load(env)
    assert s.internal_token is not None
    assert s.internal_token.get_secret_value() == "tok-very-secret"
    shown = s.redacted()
    assert shown["WSM_INTERNAL_TOKEN"] == "***"
    assert shown["WSM_STATE_URL"] == "redis://:***@h:6379/0"
    assert shown["WSM_PUBSUB_URL"] == "rediss://user:***@h:6380"
    for text in (json.dumps(shown), repr(s), str(s)):
        assert "tok-very-secret" not in text and "pw-state" not in text and "pw-pubsub" not in text
    assert load().redacted()["WSM_INTERNAL_TOKEN"] is None


def test_bad_url_error_does_not_leak_its_password() -> None:
    err = config_error(env={"WSM_STATE_URL": "postgres://u:hunter2@db/x"})
    assert "hunter2" not in str(err)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:secret@h", "redis://:***@h"),
        ("redis://user:secret@h:1/0", "redis://user:***@h:1/0"),
        ("redis://user@h", "redis://user@h"),
        ("wss://h/feed?token=abc&x=1", "wss://h/feed?token=***&x=1"),
        ("memory://", "memory://"),
        ("sqlite:///tmp/wsm.db", "sqlite:///tmp/wsm.db"),
        ("inproc://", "inproc://"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_settings_table_is_generated_from_the_model() -> None:
    rows = settings_table()
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == len(Settings.model_fields) - 1  # all but notices
    assert set(load().redacted()) == set(keys)
    by_key = {row["key"]: row for row in rows}
    assert by_key["HttpPort"]["default"] == "5001" and by_key["HttpPort"]["range"] == "1–65535"
    assert "--http-port" in by_key["HttpPort"]["cli"]
    assert by_key["Cors:AllowedOrigins"]["env"] == "Cors__AllowedOrigins"
    assert "clamped" in by_key["CONNECTION_RECORD_TTL_SECONDS"]["range"]
    assert all(row["description"] and row["type"] for row in rows)
    assert settings_markdown().count("\n") == len(rows) + 1


# -- Dapr sidecar auto-detection (effective_backends) -----------------------------------------


@pytest.mark.parametrize(
    "sidecar", [{"DAPR_GRPC_PORT": "50001"}, {"DAPR_HTTP_PORT": "3500"}], ids=["grpc", "http"]
)
def test_a_dapr_sidecar_selects_dapr_for_unset_backends(sidecar: dict[str, str]) -> None:
    settings = effective_backends(load(sidecar), sidecar)
    assert (settings.state_url, settings.pubsub_url) == ("dapr", "dapr")
    assert len(settings.notices) == 2 and all("Dapr sidecar" in n for n in settings.notices)
    # component names and ports are the settings' own, whichever way dapr was chosen
    assert settings.state_store_name == "statestore" and settings.pubsub_name == "pubsub"


def test_dapr_detection_keeps_what_the_user_set(tmp_path: Path) -> None:
    env = {"DAPR_GRPC_PORT": "50001", "WSM_STATE_URL": "redis://h:6379/0"}
    settings = effective_backends(load(env), env)
    assert (settings.state_url, settings.pubsub_url) == ("redis://h:6379/0", "dapr")
    # set in appsettings or on the command line counts as set too
    app = write_json(tmp_path / "appsettings.json", {"WSM_PUBSUB_URL": "inproc://"})
    given = load(env, overrides={"WSM_STATE_URL": "memory://"}, appsettings=app)
    both = effective_backends(given, env)
    assert both is given and (both.state_url, both.pubsub_url) == ("memory://", "inproc://")


@pytest.mark.parametrize("env", [{}, {"DAPR_GRPC_PORT": ""}, {"DAPR_HTTP_PORT": "  "}])
def test_no_sidecar_no_change(env: dict[str, str]) -> None:
    settings = load()
    assert effective_backends(settings, env) is settings
    assert settings.state_url is None and settings.pubsub_url is None


def test_dapr_detection_keeps_earlier_notices() -> None:
    env = {"DAPR_HTTP_PORT": "3500", "CONNECTION_RECORD_TTL_SECONDS": "1"}
    notices = effective_backends(load(env), env).notices
    assert notices[0].startswith("CONNECTION_RECORD_TTL_SECONDS") and len(notices) == 3


async def test_the_functions_runtime_applies_dapr_detection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wsmanager.functions import runtime

    seen: list[Settings] = []

    async def fake_open(settings: Settings) -> object:
        seen.append(settings)
        return object()

    for name in ("WSM_STATE_URL", "WSM_PUBSUB_URL", "DAPR_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAPR_GRPC_PORT", "50001")
    monkeypatch.setattr(runtime.Runtime, "open", fake_open)
    await runtime._build()
    assert seen[0].state_url == "dapr"
