"""The manifests in ``dapr-components/`` and ``knative/``: valid, strictly, and wired together.

Schema validation (offline, unknown fields fail) is described in :mod:`.validator`. On top of it
these tests check what no schema can: that names and ports refer to things that exist and agree
with the code's defaults (:class:`~wsmanager.config.Settings`, the adapters' component names,
the function command table), and the operational decisions the manifests encode (drain budget,
resources, security context, reclaim schedule).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.manifests.manifests import REPO, Manifest, load_manifests
from tests.manifests.validator import ManifestValidator
from wsmanager.adapters.dapr_secrets import DaprSecretStore
from wsmanager.adapters.dapr_state import DaprStateStore
from wsmanager.config import Settings, settings_table
from wsmanager.functions.commands import COMMAND_PREFIX, COMMANDS, FUNCTIONS, PING_TYPE

MANIFESTS = load_manifests()
CLUSTER = [m for m in MANIFESTS if m.group_set == "cluster"]
LOCAL = [m for m in MANIFESTS if m.group_set == "local"]
EXAMPLES = [m for m in MANIFESTS if m.group_set == "examples"]
DEFAULTS = Settings()
NAMESPACE = "wsm"
HOLDER_APP_ID = "websocketmanager"  # the reference's Dapr app id (reference §7)
FUNCTION_PORT = 8080
IMAGE = "ghcr.io/example/wsmanager:0.1.0"
KSVC = "serving.knative.dev/v1"
#: The command types the brief names (§5) and the function each must reach.
BRIEF_COMMANDS = {
    "connect": "connect",
    "send": "send",
    "sendraw": "sendraw",
    "disconnect": "disconnect",
    "publish.start": "publish",
    "publish.stop": "publish",
    "tags.set": "tags",
}
BRIEF_FUNCTIONS = {"connect", "send", "sendraw", "disconnect", "publish", "tags", "list", "reclaim"}
#: Annotations the Dapr sidecar injector reads (Dapr 1.18 injector ``SidecarConfig``); a typo
#: in one is silently ignored by Kubernetes and by Dapr.
KNOWN_DAPR_ANNOTATIONS = frozenset(
    "dapr.io/" + name
    for name in (
        "enabled app-port config app-protocol app-id enable-profiling log-level "
        "api-token-secret app-token-secret log-as-json app-max-concurrency enable-metrics "
        "metrics-port enable-debug debug-port env sidecar-cpu-request sidecar-cpu-limit "
        "sidecar-memory-request sidecar-memory-limit sidecar-listen-addresses "
        "sidecar-liveness-probe-delay-seconds sidecar-liveness-probe-timeout-seconds "
        "sidecar-liveness-probe-period-seconds sidecar-liveness-probe-threshold "
        "sidecar-readiness-probe-delay-seconds sidecar-readiness-probe-timeout-seconds "
        "sidecar-readiness-probe-period-seconds sidecar-readiness-probe-threshold "
        "sidecar-image sidecar-seccomp-profile-type max-body-size read-buffer-size "
        "graceful-shutdown-seconds block-shutdown-duration enable-api-logging "
        "unix-domain-socket-path volume-mounts volume-mounts-rw "
        "disable-builtin-k8s-secret-store enable-app-health-check app-health-check-path "
        "app-health-probe-interval app-health-probe-timeout app-health-threshold "
        "placement-host-address scheduler-host-address app-channel-address"
    ).split()
)
KNOWN_KNATIVE_ANNOTATIONS = frozenset(
    "autoscaling.knative.dev/" + name
    for name in (
        "min-scale max-scale initial-scale activation-scale scale-down-delay target "
        "target-utilization-percentage metric class window panic-window-percentage "
        "panic-threshold-percentage scale-to-zero-pod-retention-period"
    ).split()
)
#: Environment variables a container may set besides the settings' own names.
EXTERNAL_ENV = frozenset({"DAPR_API_TOKEN", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"})


# -- helpers ----------------------------------------------------------------------------------


def of(
    kind: str, api_version: str | None = None, group: list[Manifest] = CLUSTER
) -> list[Manifest]:
    return [
        m for m in group if m.kind == kind and (api_version is None or m.api_version == api_version)
    ]


def named(
    kind: str, name: str, group: list[Manifest] = CLUSTER, api: str | None = None
) -> Manifest:
    found = [m for m in of(kind, api, group) if m.name == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def knative_services(group: list[Manifest] = CLUSTER) -> list[Manifest]:
    return of("Service", KSVC, group)


def holder() -> Manifest:
    return named("StatefulSet", "wsm-holder", api="apps/v1")


def pod_template(m: Manifest) -> Mapping[str, Any]:
    """The pod template of a workload (StatefulSet or Knative Service)."""
    return m.spec["template"]  # type: ignore[no-any-return]


def workloads() -> list[Manifest]:
    return [holder(), *knative_services()]


def annotations(m: Manifest) -> Mapping[str, str]:
    return pod_template(m).get("metadata", {}).get("annotations", {})  # type: ignore[no-any-return]


def containers(m: Manifest) -> list[Mapping[str, Any]]:
    return list(pod_template(m)["spec"]["containers"])


def only_container(m: Manifest) -> Mapping[str, Any]:
    found = containers(m)
    assert len(found) == 1, f"{m}: one container expected (Dapr injects its sidecar)"
    return found[0]


def env_of(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    entries = container.get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}"
    return {e["name"]: e for e in entries}


def function_target(m: Manifest) -> str:
    command = list(only_container(m)["command"])
    return str(command[command.index("--target") + 1])


def dapr_app_ids() -> dict[str, Manifest]:
    ids: dict[str, Manifest] = {}
    for m in workloads():
        app_id = annotations(m)["dapr.io/app-id"]
        assert app_id not in ids, f"Dapr app id {app_id} used by {ids.get(app_id)} and {m}"
        ids[app_id] = m
    return ids


def uses_dapr(m: Manifest, variable: str) -> bool:
    env = env_of(only_container(m))
    return env.get(variable, {}).get("value") == "dapr"


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from walk(sub, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            yield from walk(sub, f"{path}[{index}]")


def example_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from knative/examples/secrets.yaml."""
    return {m.name: set(m.doc.get("data", {})) | set(m.doc.get("stringData", {})) for m in EXAMPLES}


def duration_seconds(text: str) -> float:
    """A Go duration as Dapr writes them (``45s``, ``800ms``, ``1m30s``)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def quantity_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", text)
    assert match, f"not a memory quantity: {text!r}"
    return int(match[1]) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[match[2]]


def settings_env_names() -> set[str]:
    names: set[str] = set()
    for row in settings_table():
        names.update(n.strip() for n in row["env"].split(",") if n.strip())
    return names


# -- schema validation ------------------------------------------------------------------------


def test_manifests_are_found() -> None:
    kinds = {(m.api_version, m.kind) for m in CLUSTER}
    for expected in [
        ("dapr.io/v1alpha1", "Component"),
        ("dapr.io/v1alpha1", "Configuration"),
        ("dapr.io/v1alpha1", "Resiliency"),
        (KSVC, "Service"),
        ("eventing.knative.dev/v1", "Broker"),
        ("eventing.knative.dev/v1", "Trigger"),
        ("sources.knative.dev/v1", "PingSource"),
        ("apps/v1", "StatefulSet"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ]:
        assert expected in kinds, f"no {expected} manifest"
    assert LOCAL and EXAMPLES


@pytest.mark.parametrize("manifest", MANIFESTS, ids=str)
def test_manifest_is_valid(validator: ManifestValidator, manifest: Manifest) -> None:
    errors = validator.errors(manifest.doc)
    assert not errors, f"{manifest}:\n  " + "\n  ".join(errors)


#: Free-form CRD subtrees (preserve-unknown, no properties) we may write into, and how each is
#: checked instead: Dapr metadata values and Trigger attribute filters by the tests below, a
#: Knative Service's pod spec by Kubernetes' PodSpec schema (validator).
ALLOWED_FREE_FORM = {
    ("dapr.io/v1alpha1", "Component"): re.compile(r"spec\.metadata\[\*\]\.value"),
    ("eventing.knative.dev/v1", "Trigger"): re.compile(r"spec\.filter\.attributes"),
    (KSVC, "Service"): re.compile(r"spec\.template\.spec\..+"),
}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=str)
def test_free_form_subtrees_are_only_those_checked_elsewhere(
    validator: ManifestValidator, manifest: Manifest
) -> None:
    allowed = ALLOWED_FREE_FORM.get((manifest.api_version, manifest.kind))
    for location in validator.free_form_locations(manifest.doc):
        assert allowed is not None and allowed.fullmatch(location), (
            f"{manifest} writes into the free-form CRD subtree {location}: "
            f"decide how it is validated and list it in ALLOWED_FREE_FORM"
        )


def test_dapr_metadata_values_are_strings() -> None:
    for m in of("Component", group=CLUSTER + LOCAL):
        for item in m.spec["metadata"]:
            assert ("value" in item) != ("secretKeyRef" in item), f"{m}: {item}"
            if "value" in item:
                assert isinstance(item["value"], str), f"{m}: {item['name']} must be a string"


def test_trigger_filters_are_exact_cloudevents_attributes() -> None:
    for m in of("Trigger"):
        attributes = m.spec["filter"]["attributes"]
        assert set(m.spec) == {"broker", "filter", "subscriber"}, m
        for name, value in attributes.items():
            assert re.fullmatch(r"[a-z0-9]{1,20}", name), f"{m}: bad attribute name {name!r}"
            assert isinstance(value, str) and value, f"{m}: {name} must be a non-empty string"


def test_names_namespaces_and_uniqueness() -> None:
    seen: dict[tuple[str, str, str | None, str], Manifest] = {}
    for m in CLUSTER + EXAMPLES:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", m.name), m
        if m.kind == "Namespace":
            assert m.name == NAMESPACE and m.namespace is None
        else:
            assert m.namespace == NAMESPACE, f"{m}: namespace must be {NAMESPACE}"
        key = (m.api_version, m.kind, m.namespace, m.name)
        assert key not in seen, f"{m} duplicates {seen[key]}"
        seen[key] = m
    for m in LOCAL:
        assert m.namespace is None, f"{m}: self-hosted resources carry no namespace"


# -- Dapr components, Configuration, Resiliency ---------------------------------------------


def component(name: str, group: list[Manifest] = CLUSTER) -> Manifest:
    return named("Component", name, group)


def metadata(m: Manifest) -> dict[str, Mapping[str, Any]]:
    return {item["name"]: item for item in m.spec["metadata"]}


@pytest.mark.parametrize("group", [CLUSTER, LOCAL], ids=["cluster", "local"])
def test_component_names_are_the_settings_defaults(group: list[Manifest]) -> None:
    assert component(DEFAULTS.state_store_name, group).spec["type"] == "state.redis"
    assert component(DEFAULTS.pubsub_name, group).spec["type"] == "pubsub.redis"
    assert (DEFAULTS.state_store_name, DEFAULTS.pubsub_name) == ("statestore", "pubsub")


def test_secret_store_name_is_the_adapter_default() -> None:
    default = inspect.signature(DaprSecretStore).parameters["store_name"].default
    assert component(default).spec["type"] == "secretstores.kubernetes"


@pytest.mark.parametrize("group", [CLUSTER, LOCAL], ids=["cluster", "local"])
def test_statestore_is_shared_and_not_an_actor_store(group: list[Manifest]) -> None:
    meta = metadata(component(DEFAULTS.state_store_name, group))
    assert meta["actorStateStore"]["value"] == "false"
    prefix = meta["keyPrefix"]["value"]
    # Dapr's strategies appid/namespace would give every app id its own records, and "name"
    # would prefix with "statestore"; a fixed custom prefix is shared by holders and functions.
    assert prefix == HOLDER_APP_ID, "keys must be websocketmanager||<key>"
    assert prefix.lower() == prefix and "||" not in prefix


def test_local_and_cluster_components_agree() -> None:
    for name in (DEFAULTS.state_store_name, DEFAULTS.pubsub_name):
        cluster, local = component(name), component(name, LOCAL)
        assert cluster.spec["type"] == local.spec["type"]
        assert cluster.spec["version"] == local.spec["version"]
        skip = {"redisHost", "redisPassword", "enableTLS"}
        assert {k: v for k, v in metadata(cluster).items() if k not in skip} == {
            k: v for k, v in metadata(local).items() if k not in skip
        }


def test_no_secret_values_in_cluster_manifests() -> None:
    secret_words = re.compile(r"password|token|secret|key$", re.IGNORECASE)
    for m in of("Component"):
        for name, item in metadata(m).items():
            if secret_words.search(name) and name != "keyPrefix":
                assert "secretKeyRef" in item, f"{m}: {name} must come from a secretKeyRef"
    for m in workloads():
        for c in containers(m):
            for name, entry in env_of(c).items():
                if secret_words.search(name):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{m}: {name}"


def test_every_secret_reference_names_a_declared_secret() -> None:
    declared = example_secrets()
    refs: list[tuple[str, str, str]] = []
    for m in of("Component"):
        for item in m.spec["metadata"]:
            if "secretKeyRef" in item:
                ref = item["secretKeyRef"]
                refs.append((str(m), ref["name"], ref["key"]))
        assert m.doc.get("auth", {}).get("secretStore", "kubernetes") in {
            "kubernetes",
            *(c.name for c in of("Component") if c.spec["type"].startswith("secretstores.")),
        }
    for m in workloads():
        for c in containers(m):
            for entry in c.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((str(m), ref["name"], ref["key"]))
        for annotation in ("dapr.io/app-token-secret", "dapr.io/api-token-secret"):
            # Dapr reads the key "token" of the named Secret.
            refs.append((f"{m} {annotation}", annotations(m)[annotation], "token"))
    assert refs
    for where, name, key in refs:
        assert name in declared, f"{where}: secret {name} is not in knative/examples/secrets.yaml"
        assert key in declared[name], f"{where}: secret {name} has no key {key}"


def test_example_secrets_cannot_be_applied_unedited() -> None:
    for m in EXAMPLES:
        assert m.kind == "Secret" and "stringData" not in m.doc
        for value in m.doc["data"].values():
            # "_" is not in the base64 alphabet: the API server refuses the placeholder.
            assert value.startswith("REPLACE_") and "_" in value


def test_component_scopes_name_existing_app_ids() -> None:
    app_ids = dapr_app_ids()
    for m in of("Component") + of("Resiliency"):
        scopes = m.doc.get("scopes", [])
        assert scopes, f"{m}: scope components to the apps that need them"
        assert set(scopes) <= set(app_ids), f"{m}: unknown app ids {set(scopes) - set(app_ids)}"
    state_users = {a for a, m in app_ids.items() if uses_dapr(m, "WSM_STATE_URL")}
    pubsub_users = {a for a, m in app_ids.items() if uses_dapr(m, "WSM_PUBSUB_URL")}
    assert state_users == set(app_ids), "every app reads the state store through Dapr"
    assert pubsub_users == {HOLDER_APP_ID}, "only holders publish"
    assert state_users <= set(component(DEFAULTS.state_store_name).doc["scopes"])
    assert pubsub_users <= set(component(DEFAULTS.pubsub_name).doc["scopes"])


def test_configuration() -> None:
    configs = {m.name: m for m in of("Configuration")}
    for m in workloads():
        assert annotations(m)["dapr.io/config"] in configs, f"{m}: unknown Dapr configuration"
    for m in configs.values():
        spec = m.spec
        assert spec["mtls"]["enabled"] is True
        assert 0 < float(spec["tracing"]["samplingRate"]) <= 1
        assert spec["accessControl"]["defaultAction"] == "deny"
        stores = {c.name for c in of("Component") if c.spec["type"].startswith("secretstores.")}
        role_names = {
            n for r in of("Role") for rule in r.doc["rules"] for n in rule["resourceNames"]
        }
        for scope in spec["secrets"]["scopes"]:
            assert scope["storeName"] in stores
            assert scope["defaultAccess"] == "deny"
            assert set(scope["allowedSecrets"]) <= role_names, "RBAC must allow what Dapr may"
    local = of("Configuration", group=LOCAL)
    assert [m.name for m in local] == ["wsm-local-config"]


@pytest.mark.parametrize("group", [CLUSTER, LOCAL], ids=["cluster", "local"])
def test_resiliency_targets_and_policies_exist(group: list[Manifest]) -> None:
    (res,) = of("Resiliency", group=group)
    policies = res.spec["policies"]
    components = {m.name for m in of("Component", group=group)}
    targets = res.spec["targets"]["components"]
    assert set(targets) <= components
    for name in (DEFAULTS.state_store_name, DEFAULTS.pubsub_name):
        outbound = targets[name]["outbound"]
        assert {"timeout", "retry", "circuitBreaker"} <= set(outbound), name
    for name, target in targets.items():
        for direction in target.values():
            for kind, section in (
                ("timeout", "timeouts"),
                ("retry", "retries"),
                ("circuitBreaker", "circuitBreakers"),
            ):
                if kind in direction:
                    assert direction[kind] in policies[section], f"{name}: {direction[kind]}"
    for retry in policies["retries"].values():
        assert retry["policy"] == "exponential", "retries back off"


def test_local_resiliency_equals_cluster_resiliency() -> None:
    (cluster,) = of("Resiliency")
    (local,) = of("Resiliency", group=LOCAL)
    assert local.spec["policies"] == cluster.spec["policies"]
    local_targets = local.spec["targets"]["components"]
    assert local_targets == {k: cluster.spec["targets"]["components"][k] for k in local_targets}


def test_resiliency_budget_fits_the_adapter_timeout() -> None:
    """Worst case of one state call inside the sidecar stays under the adapter's own timeout."""
    adapter_timeout = inspect.signature(DaprStateStore).parameters["call_timeout"].default
    (res,) = of("Resiliency")
    policies = res.spec["policies"]
    outbound = res.spec["targets"]["components"][DEFAULTS.state_store_name]["outbound"]
    timeout = duration_seconds(policies["timeouts"][outbound["timeout"]])
    retry = policies["retries"][outbound["retry"]]
    worst = (retry["maxRetries"] + 1) * timeout + retry["maxRetries"] * duration_seconds(
        retry["maxInterval"]
    )
    assert worst < adapter_timeout, f"{worst}s of retries inside a {adapter_timeout}s call"


# -- Dapr annotations on workloads ------------------------------------------------------------


@pytest.mark.parametrize("workload", workloads(), ids=str)
def test_dapr_annotations(workload: Manifest) -> None:
    notes = annotations(workload)
    dapr = {k: v for k, v in notes.items() if k.startswith("dapr.io/")}
    assert set(dapr) <= KNOWN_DAPR_ANNOTATIONS, f"unknown: {set(dapr) - KNOWN_DAPR_ANNOTATIONS}"
    assert all(isinstance(v, str) for v in notes.values()), "annotation values are strings"
    assert dapr["dapr.io/enabled"] == "true"
    assert dapr["dapr.io/app-protocol"] == "http"
    ports = [p["containerPort"] for p in only_container(workload).get("ports", [])]
    assert ports == [int(dapr["dapr.io/app-port"])], "Dapr's app port is the container's port"
    assert "dapr.io/app-max-concurrency" not in dapr, "concurrency is Knative's to limit"


def test_dapr_app_ids() -> None:
    ids = dapr_app_ids()
    assert ids[HOLDER_APP_ID] is holder()
    for m in knative_services():
        assert annotations(m)["dapr.io/app-id"] == m.name


def test_dapr_sidecar_ports_are_the_settings_defaults() -> None:
    """The injector gives every sidecar HTTP 3500 and gRPC 50001 (and exports them as
    DAPR_HTTP_PORT/DAPR_GRPC_PORT); no annotation may move them."""
    assert (DEFAULTS.dapr_http_port, DEFAULTS.dapr_grpc_port) == (3500, 50001)
    for m in workloads():
        env = env_of(only_container(m))
        assert "DAPR_HTTP_PORT" not in env and "DAPR_GRPC_PORT" not in env
        assert "DaprHttpPort" not in env and "DaprGrpcPort" not in env


def test_knative_pods_move_the_sidecar_metrics_port() -> None:
    """Knative's queue-proxy serves its metrics on 9090, daprd's default metrics port."""
    for m in knative_services():
        assert annotations(m).get("dapr.io/metrics-port") not in (None, "9090", "9091"), m


# -- the holder -------------------------------------------------------------------------------


def test_holder_workload() -> None:
    sts = holder()
    notes = annotations(sts)
    assert notes["dapr.io/app-id"] == HOLDER_APP_ID
    assert notes["dapr.io/app-port"] == str(DEFAULTS.http_port)
    assert sts.spec["replicas"] >= 2, "one holder is a single point of failure"
    assert sts.spec["podManagementPolicy"] == "Parallel"
    labels = pod_template(sts)["metadata"]["labels"]
    assert sts.spec["selector"]["matchLabels"].items() <= labels.items()
    c = only_container(sts)
    assert c["command"] == ["wsm", "holder"]
    assert [p["containerPort"] for p in c["ports"]] == [DEFAULTS.http_port]
    probes = {
        name: (c[name]["httpGet"]["path"], c[name]["httpGet"]["port"])
        for name in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert probes == {
        "readinessProbe": ("/ready", DEFAULTS.http_port),
        "livenessProbe": ("/health", DEFAULTS.http_port),
        "startupProbe": ("/health", DEFAULTS.http_port),
    }


def test_holder_drain_budget() -> None:
    """R11: the sidecar outlives the holder's drain, and Kubernetes waits for both."""
    sts = holder()
    notes = annotations(sts)
    grace = pod_template(sts)["spec"]["terminationGracePeriodSeconds"]
    block = duration_seconds(notes["dapr.io/block-shutdown-duration"])
    sidecar_grace = int(notes["dapr.io/graceful-shutdown-seconds"])
    assert grace >= 60
    assert block >= 30, "the drain needs the sidecar's API after SIGTERM"
    assert grace >= block + sidecar_grace + 5
    # With an app health check, daprd would stop blocking as soon as the holder closes its
    # port, which it does before releasing its connections through the sidecar.
    assert notes.get("dapr.io/enable-app-health-check", "false") == "false"


def test_holder_headless_service_and_pdb() -> None:
    sts = holder()
    svc = named("Service", sts.spec["serviceName"], api="v1")
    assert svc.spec["clusterIP"] == "None"
    labels = pod_template(sts)["metadata"]["labels"]
    assert svc.spec["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in svc.spec["ports"]] == [
        (DEFAULTS.http_port, DEFAULTS.http_port)
    ]
    (pdb,) = of("PodDisruptionBudget")
    assert pdb.spec["selector"]["matchLabels"].items() <= labels.items()
    assert pdb.spec["maxUnavailable"] == 1


def test_holder_env() -> None:
    env = env_of(only_container(holder()))
    assert env["HOSTNAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["WSM_HTTP_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["WSM_STATE_URL"]["value"] == "dapr"
    assert env["WSM_PUBSUB_URL"]["value"] == "dapr"
    assert env["WSM_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "wsm-internal-token"


def _environ(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment as the process would see it (placeholders for refs)."""
    placeholders = {"metadata.name": "wsm-holder-0", "status.podIP": "10.1.2.3"}
    out: dict[str, str] = {}
    for name, entry in env_of(container).items():
        if "value" in entry:
            out[name] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            out[name] = placeholders[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            out[name] = "t" * 32
    return out


@pytest.mark.parametrize("workload", workloads(), ids=str)
def test_container_env_loads_into_settings(workload: Manifest) -> None:
    container = only_container(workload)
    unknown = set(env_of(container)) - settings_env_names() - EXTERNAL_ENV
    assert not unknown, f"env names no setting reads: {unknown}"
    settings = Settings.load(environ=_environ(container))
    assert settings.state_url == "dapr" and settings.internal_token is not None
    assert settings.state_store_name == DEFAULTS.state_store_name
    if workload is holder():
        assert settings.pubsub_url == "dapr"
        assert settings.instance_id == "wsm-holder-0"
        assert settings.advertised_endpoint() == f"http://10.1.2.3:{DEFAULTS.http_port}"
        assert settings.http_port == container["ports"][0]["containerPort"]


# -- every container --------------------------------------------------------------------------


@pytest.mark.parametrize("workload", workloads(), ids=str)
def test_container_security_context(workload: Manifest) -> None:
    pod = pod_template(workload)["spec"]
    pod_ctx = pod.get("securityContext", {})
    for c in containers(workload):
        ctx = c["securityContext"]
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True
        assert (ctx.get("runAsUser") or pod_ctx.get("runAsUser") or 0) > 0, "numeric non-root"
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}
        assert "privileged" not in ctx


@pytest.mark.parametrize("workload", workloads(), ids=str)
def test_container_resources_and_image(workload: Manifest) -> None:
    for c in containers(workload):
        assert c["image"] == IMAGE, "one image for holders and functions"
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and "memory" in limits
        assert quantity_bytes(limits["memory"]) >= quantity_bytes(requests["memory"])
    notes = annotations(workload)
    assert "dapr.io/sidecar-memory-request" in notes and "dapr.io/sidecar-memory-limit" in notes


def test_holder_is_sized_for_ten_thousand_connections() -> None:
    """Brief §7: about 22 KiB per idle connection; 10,000 per holder plus a baseline."""
    resources = only_container(holder())["resources"]
    sockets = 10_000 * 22 * 1024
    assert quantity_bytes(resources["requests"]["memory"]) >= sockets + 256 * (1 << 20)
    assert quantity_bytes(resources["limits"]["memory"]) >= 2 * sockets
    assert resources["requests"]["cpu"] == "500m"
    assert "cpu" not in resources["limits"], "CPU throttling would delay heartbeats (R4)"


def test_service_accounts_and_rbac() -> None:
    accounts = {m.name for m in of("ServiceAccount")}
    for m in workloads():
        assert pod_template(m)["spec"]["serviceAccountName"] in accounts, m
    roles = {m.name: m for m in of("Role")}
    for binding in of("RoleBinding"):
        assert binding.doc["roleRef"]["kind"] == "Role"
        role = roles[binding.doc["roleRef"]["name"]]
        for subject in binding.doc["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
            assert subject["namespace"] == NAMESPACE
        for rule in role.doc["rules"]:
            assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"]
            assert "wsm-internal-token" in rule["resourceNames"], "least privilege, by name"


# -- functions, triggers, PingSource ----------------------------------------------------------


def test_one_knative_service_per_function() -> None:
    targets = {function_target(m): m for m in knative_services()}
    assert set(targets) == BRIEF_FUNCTIONS == set(FUNCTIONS)
    for name, m in targets.items():
        assert m.name == f"wsm-{name}"


@pytest.mark.parametrize("service", knative_services(), ids=str)
def test_function_service(service: Manifest) -> None:
    c = only_container(service)
    name = function_target(service)
    assert c["command"] == [
        "functions-framework",
        "--target",
        name,
        "--source",
        f"functions/{name}/main.py",
        "--asgi",
        "--port",
        str(FUNCTION_PORT),
    ]
    assert [p["containerPort"] for p in c["ports"]] == [FUNCTION_PORT]
    assert service.doc["metadata"]["labels"]["networking.knative.dev/visibility"] == (
        "cluster-local"
    )
    env = env_of(c)
    assert env["WSM_STATE_URL"]["value"] == "dapr"
    assert "WSM_PUBSUB_URL" not in env, "functions never publish"


@pytest.mark.parametrize("name", sorted(BRIEF_FUNCTIONS))
def test_function_source_defines_its_target(name: str) -> None:
    """The command's --source exists and defines --target (passes once the functions land)."""
    source = REPO / "functions" / name / "main.py"
    assert source.is_file(), f"{source.relative_to(REPO)} is missing"
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    defined = {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert name in defined, f"{source.relative_to(REPO)} defines no function {name!r}"


@pytest.mark.parametrize("service", knative_services(), ids=str)
def test_knative_scale_annotations(service: Manifest) -> None:
    notes = annotations(service)
    knative = {k for k in notes if "knative.dev/" in k}
    assert knative <= KNOWN_KNATIVE_ANNOTATIONS, knative - KNOWN_KNATIVE_ANNOTATIONS
    low = int(notes["autoscaling.knative.dev/min-scale"])
    high = int(notes["autoscaling.knative.dev/max-scale"])
    assert 0 <= low <= high and high >= 1
    pod = pod_template(service)["spec"]
    assert pod["containerConcurrency"] >= 1
    assert 0 < pod["timeoutSeconds"] <= 600
    if function_target(service) == "reclaim":
        assert (high, pod["containerConcurrency"]) == (1, 1), "one sweep at a time"
    if function_target(service) == "send":
        send_wait = COMMANDS[COMMAND_PREFIX + "send"]
        assert send_wait.function == "send"
        assert pod["timeoutSeconds"] >= 60, "correlated sends wait for their reply"


def test_triggers_route_each_command_to_its_function() -> None:
    brokers = {m.name for m in of("Broker")}
    services = {m.name: function_target(m) for m in knative_services()}
    routed: dict[str, str] = {}
    for trigger in of("Trigger"):
        assert trigger.spec["broker"] in brokers, f"{trigger}: no such Broker"
        ref = trigger.spec["subscriber"]["ref"]
        assert (ref["apiVersion"], ref["kind"]) == (KSVC, "Service")
        assert ref["name"] in services, f"{trigger}: no Knative Service {ref['name']}"
        assert "namespace" not in ref or ref["namespace"] == NAMESPACE
        event_type = trigger.spec["filter"]["attributes"]["type"]
        assert set(trigger.spec["filter"]["attributes"]) == {"type"}
        assert event_type not in routed, f"two Triggers for {event_type}"
        command = COMMANDS.get(event_type)
        assert command is not None, f"{trigger}: no function accepts {event_type}"
        assert services[ref["name"]] == command.function, f"{trigger}: wrong function"
        routed[event_type] = command.function
    for suffix, function in BRIEF_COMMANDS.items():
        assert routed.get(COMMAND_PREFIX + suffix) == function, suffix
    # Every command the functions accept has a Trigger, except reclaim (the PingSource's).
    routable = {t for t, c in COMMANDS.items() if c.function != "reclaim"}
    assert set(routed) == routable


def test_pingsource_ticks_the_reclaim_function() -> None:
    (ping,) = of("PingSource")
    ref = ping.spec["sink"]["ref"]
    assert (ref["apiVersion"], ref["kind"]) == (KSVC, "Service")
    sink = named("Service", ref["name"], api=KSVC)
    assert function_target(sink) == "reclaim"
    # The event type a PingSource sends is the one the reclaim function accepts.
    assert PING_TYPE == "dev.knative.sources.ping"
    assert COMMANDS[PING_TYPE].function == "reclaim"


def test_pingsource_schedule_is_a_standard_cron_firing_every_minute() -> None:
    """Knative validates the schedule with the standard 5-field cron parser (minute
    granularity); the holders sweep every RECLAIM_INTERVAL_SECONDS, the tick is a backstop."""
    (ping,) = of("PingSource")
    fields = ping.spec["schedule"].split()
    assert len(fields) == 5, "standard cron: minute hour day-of-month month day-of-week"
    assert fields[0] in ("*", "*/1") and fields[1:] == ["*"] * 4, "once a minute"
    assert "@every" not in ping.spec["schedule"] and "timezone" not in ping.spec
    holder_env = env_of(only_container(holder()))
    assert "RECLAIM_INTERVAL_SECONDS" not in holder_env
    assert DEFAULTS.reclaim_interval <= 60, "holders sweep at least as often as the backstop"


# -- the documentation ------------------------------------------------------------------------


def test_kubernetes_doc_names_only_existing_files() -> None:
    doc = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    assert "## Run it on Kubernetes" in doc and "## Run it locally with Dapr" in doc
    assert IMAGE in doc, "the doc tells users to replace the placeholder image"
    paths = set(re.findall(r"(?:knative|dapr-components|functions)/[\w./<>-]*\.(?:yaml|py)", doc))
    assert paths
    for path in paths:
        if "<" not in path:
            assert (REPO / path).is_file(), f"docs/kubernetes.md names missing {path}"
