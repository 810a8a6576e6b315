"""Layered settings: appsettings.json -> environment -> command line, last wins (brief §5).

Validation uses pydantic v2, our chosen validation library: :class:`Settings` is a frozen
pydantic model whose fields *are* the settings table (key, default, range, description), so
:func:`settings_table` and the README table are generated from the class body.

Nothing is read at import. :meth:`Settings.load` takes the environment as a mapping (the caller
passes ``os.environ``), an optional appsettings.json path and the command-line overrides, and
raises :class:`~wsmanager.core.errors.ConfigError` naming the key on the first bad value.

Keys are case-sensitive as written. A key is found in a layer as written, with ``:`` spelled
``__`` (``Cors__AllowedOrigins``), or for lists item by item (``Cors__AllowedOrigins__0``).
Nested appsettings objects flatten to ``A:B`` keys. ``CONNECTION_RECORD_TTL_SECONDS`` outside
30–3600 is clamped by :meth:`Settings.load` (as the reference does) and the clamp is recorded in
:attr:`Settings.notices`; constructing the model directly rejects it instead.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    ValidationError,
    model_validator,
)

from wsmanager._config_parse import (
    Flag,
    Int,
    Name,
    OptText,
    Port,
    Seconds,
    Strings,
    Text,
    check_cors_origin,
    check_http_url,
    check_pubsub_url,
    check_state_url,
    check_target_host,
    lookup,
    parse_int,
    parse_optional,
    read_appsettings,
    redact_url,
)
from wsmanager._config_table import (
    extra,
    format_value,
    markdown,
    named_fields,
    setting,
    shown,
    table_rows,
)
from wsmanager.core.errors import ConfigError
from wsmanager.core.ownership import LivenessPolicy

__all__ = [
    "DAPR_SIDECAR_ENV",
    "LOG_LEVELS",
    "Settings",
    "effective_backends",
    "format_value",
    "redact_url",
    "settings_markdown",
    "settings_table",
]

#: .NET log levels and their Python ``logging`` numbers.
LOG_LEVELS: dict[str, int] = {
    "Trace": 5,
    "Debug": logging.DEBUG,
    "Information": logging.INFO,
    "Warning": logging.WARNING,
    "Error": logging.ERROR,
    "Critical": logging.CRITICAL,
    "None": logging.CRITICAL + 10,
}
_TTL_KEY, _TTL_MIN, _TTL_MAX = "CONNECTION_RECORD_TTL_SECONDS", 30, 3600


def _parse_log_level(value: object) -> object:
    if isinstance(value, str):
        for name in LOG_LEVELS:
            if value.strip().lower() == name.lower():
                return name
    raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")


def _check_host(host: str) -> str:
    if "/" in host or any(c.isspace() for c in host):
        raise ValueError("expected a bare host name or IP address")
    return host


LogLevel = Annotated[
    Literal["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"],
    BeforeValidator(_parse_log_level),
]
Secret = Annotated[SecretStr | None, BeforeValidator(parse_optional)]


class Settings(BaseModel):
    """The effective configuration of one process. Frozen; build it with :meth:`load`."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, populate_by_name=True, hide_input_in_errors=True
    )

    # -- service (reference §5) ------------------------------------------------------------
    http_port: Port = setting(
        5001, "HttpPort", "Holder HTTP port (REST API, health, metrics).", cli=("--http-port", "-s")
    )
    grpc_port: Port = setting(
        5002, "GrpcPort", "gRPC port; must differ from HttpPort.", cli=("--grpc-port", "-g")
    )
    cors_allowed_origins: Annotated[Strings, AfterValidator(check_cors_origin)] = setting(
        (),
        "Cors:AllowedOrigins",
        "Origins allowed by CORS (scheme://host[:port] or *); "
        "empty denies every origin. Env: JSON list or comma-separated.",
    )
    log_level: LogLevel = setting(
        "Information",
        "Logging:LogLevel:Default",
        "Minimum log level (Trace…None).",
        cli=("--log-level", "-l"),
    )
    pubsub_name: Name = setting(
        "pubsub", "pubsubName", "Dapr pub/sub component name.", cli=("--pubsub-name", "-n")
    )
    state_store_name: Name = setting(
        "statestore",
        "stateStoreName",
        "Dapr state store component name.",
        cli=("--state-store-name", "-t"),
    )
    dapr_http_port: Port = setting(
        3500,
        "DaprHttpPort",
        "Dapr sidecar HTTP port.",
        cli=("--dapr-http-port",),
        env=("DAPR_HTTP_PORT",),
    )
    dapr_grpc_port: Port = setting(
        50001,
        "DaprGrpcPort",
        "Dapr sidecar gRPC port.",
        cli=("--dapr-grpc-port",),
        env=("DAPR_GRPC_PORT",),
    )
    allowed_target_hosts: Annotated[Strings, AfterValidator(check_target_host)] = setting(
        (),
        "AllowedTargetHosts",
        "Hosts outbound URLs may reach even when private, loopback or "
        "link-local (brief §8). Env: JSON list or comma-separated.",
    )
    # -- identity and liveness (R1-R12) ----------------------------------------------------
    instance_id: OptText = setting(
        None,
        "HOSTNAME",
        "Instance id, the pod name (R1); unset or empty: a new UUID per process start.",
        default_text="(new UUID per process)",
    )
    heartbeat_interval: Seconds = setting(
        10.0,
        "INSTANCE_HEARTBEAT_INTERVAL_SECONDS",
        "Heartbeat interval (R4); 0 disables heartbeats.",
        ge=0,
    )
    discovery_interval: Seconds = setting(
        30.0, "INSTANCE_DISCOVERY_INTERVAL_SECONDS", "Peer discovery interval (R4).", gt=0
    )
    stale_threshold: Seconds = setting(
        60.0,
        "INSTANCE_STALE_THRESHOLD_SECONDS",
        "A peer whose heartbeat is older is dead (R4).",
        gt=0,
        note="> heartbeat interval when heartbeats are on",
    )
    reclaim_interval: Seconds = setting(
        30.0, "RECLAIM_INTERVAL_SECONDS", "Reclaim sweep interval (R7).", gt=0
    )
    stale_connection_ttl: Seconds = setting(
        60.0,
        "STALE_CONNECTION_TTL_SECONDS",
        "A dead owner's record unrenewed this long is reclaimable (R6).",
        gt=0,
    )
    clear_all_on_start: Flag = setting(
        False,
        "CLEAR_ALL_ON_START",
        "Delete every connection record and index before serving (R10; destructive).",
    )
    connection_record_ttl: Int = setting(
        300,
        _TTL_KEY,
        "Store TTL of connection records, garbage collection only (R12).",
        ge=_TTL_MIN,
        le=_TTL_MAX,
        note="clamped by load()",
    )
    # -- backends, endpoint, secrets -------------------------------------------------------
    state_url: Annotated[OptText, AfterValidator(check_state_url)] = setting(
        None,
        "WSM_STATE_URL",
        "State store: sqlite:///path, redis://host:port/db, rediss://…, "
        "memory:// or dapr (component stateStoreName).",
        redact="url",
        default_text="(caller decides; wsm serve: SQLite in ./.wsm/; beside a Dapr sidecar: dapr)",
    )
    pubsub_url: Annotated[OptText, AfterValidator(check_pubsub_url)] = setting(
        None,
        "WSM_PUBSUB_URL",
        "Publisher: inproc://, redis://… (Redis Streams), dapr "
        "(component pubsubName) or knative (to K_SINK).",
        redact="url",
        default_text="(caller decides; wsm serve: inproc://; beside a Dapr sidecar: dapr)",
    )
    k_sink: Annotated[OptText, AfterValidator(check_http_url)] = setting(
        None,
        "K_SINK",
        "CloudEvents sink URL; required when WSM_PUBSUB_URL is knative.",
        redact="url",
    )
    http_host: Annotated[Name, AfterValidator(_check_host)] = setting(
        "127.0.0.1",
        "WSM_HTTP_HOST",
        "Host advertised to peers as http://host:HttpPort.",
        default_text="$POD_IP, else 127.0.0.1",
    )
    internal_token: Secret = setting(
        None,
        "WSM_INTERNAL_TOKEN",
        "Token for holder-to-holder and function-to-holder calls.",
        redact="all",
    )
    key_prefix: Text = setting("", "WSM_KEY_PREFIX", "Namespace prepended to every state key.")
    # -- WebSocket options -----------------------------------------------------------------
    reconnect_max_attempts: Int = setting(
        5, "ReconnectMaxAttempts", "Reconnect attempts before giving up.", ge=0
    )
    reconnect_base_delay_ms: Int = setting(
        1000, "ReconnectBaseDelayMs", "First reconnect delay; doubles per attempt.", ge=1
    )
    max_reconnect_delay_ms: Int = setting(
        30000,
        "MaxReconnectDelayMs",
        "Cap on the reconnect delay.",
        ge=1,
        note=">= ReconnectBaseDelayMs",
    )
    default_timeout_ms: Int = setting(10000, "DefaultTimeoutMs", "Correlated Send timeout.", ge=1)
    max_message_bytes: Int = setting(1 << 20, "MaxMessageBytes", "Largest message accepted.", ge=1)
    send_queue_size: Int = setting(1000, "SendQueueSize", "Outbound queue per connection.", ge=1)
    websocket_compression: Flag = setting(
        False, "WebSocketCompression", "Offer permessage-deflate."
    )
    websocket_heartbeat: Seconds = setting(
        20.0, "WebSocketHeartbeatSeconds", "Ping interval on outbound sockets; 0 disables.", ge=0
    )

    #: Not a setting: what :meth:`load` adjusted (e.g. a clamped TTL), for the caller to log.
    notices: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.http_port == self.grpc_port:
            raise ConfigError("GrpcPort", f"must differ from HttpPort (both {self.http_port})")
        if self.heartbeat_interval > 0 and self.stale_threshold <= self.heartbeat_interval:
            raise ConfigError(
                "INSTANCE_STALE_THRESHOLD_SECONDS",
                f"must be longer than INSTANCE_HEARTBEAT_INTERVAL_SECONDS "
                f"({self.heartbeat_interval:g}) while heartbeats are on",
            )
        if self.max_reconnect_delay_ms < self.reconnect_base_delay_ms:
            raise ConfigError("MaxReconnectDelayMs", "must be >= ReconnectBaseDelayMs")
        if self.pubsub_url == "knative" and self.k_sink is None:
            raise ConfigError("K_SINK", "required when WSM_PUBSUB_URL is knative")
        return self

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str],
        appsettings_path: str | Path | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Settings:
        """Merge the layers (appsettings -> ``environ`` -> ``overrides``) and validate.

        ``overrides`` are command-line values by key (``--set Key=Value`` or dedicated flags);
        an unknown key there is an error. ``WSM_HTTP_HOST`` defaults to ``environ["POD_IP"]``.
        """
        overrides = dict(overrides or {})
        _reject_unknown(overrides)
        layers: list[Mapping[str, object]] = [environ, overrides]
        if appsettings_path is not None:
            layers.insert(0, read_appsettings(Path(appsettings_path)))
        raw: dict[str, object] = {}
        for _, key, info in named_fields(cls):
            aliases = tuple(extra(info, "env"))
            is_list = get_origin(info.annotation) is tuple
            for layer in layers:
                found, value = lookup(
                    layer, key, aliases if layer is environ else (), is_list=is_list
                )
                if found:
                    raw[key] = value
        if "WSM_HTTP_HOST" not in raw:
            raw["WSM_HTTP_HOST"] = environ.get("POD_IP", "").strip() or "127.0.0.1"
        notices: list[str] = []
        if _TTL_KEY in raw:
            raw[_TTL_KEY] = _clamp_ttl(raw[_TTL_KEY], notices)
        try:
            settings = cls.model_validate(raw)
        except ValidationError as exc:
            raise _config_error(exc) from exc
        return settings.model_copy(update={"notices": tuple(notices)}) if notices else settings

    def liveness_policy(self) -> LivenessPolicy:
        """The R4/R6/R8 timing knobs for :mod:`wsmanager.core.ownership`."""
        return LivenessPolicy(
            heartbeat_interval=self.heartbeat_interval,
            stale_threshold=self.stale_threshold,
            stale_connection_ttl=self.stale_connection_ttl,
        )

    def redacted(self) -> dict[str, Any]:
        """The effective configuration by key, JSON-ready, with secrets shown as ``***``."""
        fields = named_fields(type(self))
        return {key: shown(info, getattr(self, name)) for name, key, info in fields}

    def advertised_endpoint(self) -> str:
        """``http://{WSM_HTTP_HOST}:{HttpPort}``, with IPv6 addresses bracketed."""
        host = self.http_host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass  # a host name
        return f"http://{host}:{self.http_port}"

    @property
    def python_log_level(self) -> int:
        """``Logging:LogLevel:Default`` as a :mod:`logging` level number."""
        return LOG_LEVELS[self.log_level]

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        fields = type(self).model_fields
        for name, value in super().__repr_args__():
            info = fields.get(name or "")
            if info is not None and extra(info, "redact") and value is not None:
                value = shown(info, value)
            yield name, value


#: What the Dapr sidecar injector sets in the application's container: its presence means a
#: sidecar runs beside us.
DAPR_SIDECAR_ENV = ("DAPR_GRPC_PORT", "DAPR_HTTP_PORT")


def effective_backends(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``settings`` with ``WSM_STATE_URL`` / ``WSM_PUBSUB_URL`` set to ``dapr`` where they are
    unset (in every layer) and a Dapr sidecar is present (:data:`DAPR_SIDECAR_ENV`).

    For ``wsm holder`` and the functions, which run in pods; ``wsm serve`` does not call it, so
    it keeps its SQLite / in-process defaults even inside a Dapr-enabled pod. Each choice is
    recorded in :attr:`Settings.notices`, so start-up says why a backend was picked.
    """
    found = next((name for name in DAPR_SIDECAR_ENV if environ.get(name, "").strip()), None)
    if found is None:
        return settings
    update: dict[str, object] = {}
    notices = list(settings.notices)
    for name, key in (("state_url", "WSM_STATE_URL"), ("pubsub_url", "WSM_PUBSUB_URL")):
        if getattr(settings, name) is None:
            update[name] = "dapr"
            notices.append(f"{key} unset and a Dapr sidecar is present ({found}): using dapr")
    if not update:
        return settings
    update["notices"] = tuple(notices)
    return settings.model_copy(update=update)


def _reject_unknown(overrides: Mapping[str, str]) -> None:
    known = {key for _, key, _ in named_fields(Settings)}
    for given in overrides:
        key = given.replace("__", ":")
        base, _, index = key.rpartition(":")
        if key in known or (index.isdigit() and base in known):
            continue
        hint = next((k for k in known if k.lower() == key.lower()), None)
        raise ConfigError(given, f"unknown setting{f' (did you mean {hint}?)' if hint else ''}")


def _clamp_ttl(value: object, notices: list[str]) -> int:
    try:
        ttl = parse_int(value)
    except ValueError as exc:
        raise ConfigError(_TTL_KEY, f"{exc} (got {value!r})") from None
    clamped = min(max(ttl, _TTL_MIN), _TTL_MAX)
    if clamped != ttl:
        notices.append(f"{_TTL_KEY}: {ttl} clamped to {clamped} ({_TTL_MIN}-{_TTL_MAX})")
    return clamped


def _config_error(exc: ValidationError) -> ConfigError:
    """The first pydantic error as a ConfigError naming the key (values of secrets hidden)."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    loc = err["loc"][0] if err["loc"] else None
    fields = Settings.model_fields
    info = fields.get(str(loc)) or next((i for _, k, i in named_fields(Settings) if k == loc), None)
    key = info.alias if info is not None and info.alias else str(loc or "Settings")
    message = str(cause) if err["type"] == "value_error" and cause else err["msg"]
    if info is not None and "input" in err and extra(info, "redact") != "all":
        message += f" (got {shown(info, err['input'])!r})"
    return ConfigError(key, message)


def settings_table() -> list[dict[str, str]]:
    """One row per setting: key, attribute, env, cli, type, default, range, description."""
    return table_rows(Settings)


def settings_markdown() -> str:
    """The settings table as Markdown, for the README configuration section."""
    return markdown(settings_table())
