"""The strict validator itself: planted mistakes are rejected, legitimate freedom is not."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.manifests.manifests import REPO, Manifest, load_manifests
from tests.manifests.validator import (
    CRD_DIR_ENV,
    FREE_FORM,
    CrdDirMissing,
    ManifestValidator,
    find_crd_dir,
    strict_schema,
)

MANIFESTS = load_manifests()
PLANTED = "wsmPlantedUnknownField"


def _one(kind: str, name: str) -> dict[str, Any]:
    for m in MANIFESTS:
        if m.kind == kind and m.name == name and m.group_set == "cluster":
            return copy.deepcopy(dict(m.doc))
    raise LookupError(f"{kind}/{name}")


def _knative_service() -> dict[str, Any]:
    doc = _one("Service", "wsm-send")
    assert doc["apiVersion"] == "serving.knative.dev/v1"
    return doc


def _plant_targets(doc: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Object paths to plant an unknown field at: the root, metadata, and spec if any."""
    targets: list[tuple[str, ...]] = [(), ("metadata",)]
    if isinstance(doc.get("spec"), Mapping):
        targets.append(("spec",))
    return targets


def _at(doc: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


PLANTS = [
    pytest.param(m, target, id=f"{m}@{'.'.join(target) or 'root'}")
    for m in MANIFESTS
    for target in _plant_targets(m.doc)
]


@pytest.mark.parametrize(("manifest", "target"), PLANTS)
def test_planted_unknown_field_is_rejected(
    validator: ManifestValidator, manifest: Manifest, target: tuple[str, ...]
) -> None:
    doc = copy.deepcopy(dict(manifest.doc))
    _at(doc, target)[PLANTED] = "x"
    errors = validator.errors(doc)
    assert errors, f"{manifest}: an unknown field at {target or 'root'} was accepted"
    assert any(PLANTED in e for e in errors), errors


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (("spec", "template", "spec", "containers", 0), "typed container"),
        (("spec", "template", "spec", "containers", 0, "securityContext"), "typed"),
        (("spec", "template", "spec", "containers", 0, "resources"), "typed resources"),
        (("spec", "template", "metadata"), "preserve-unknown with properties"),
    ],
)
def test_deep_typo_in_knative_service_is_rejected(
    validator: ManifestValidator, path: tuple[str | int, ...], why: str
) -> None:
    doc = _knative_service()
    _at(doc, path)[PLANTED] = True
    assert any(PLANTED in e for e in validator.errors(doc)), why


def test_typo_in_an_open_knative_pod_field_is_caught_by_the_podspec_pass(
    validator: ManifestValidator,
) -> None:
    """The CRD leaves the pod securityContext open (a feature flag); Kubernetes types it."""
    doc = _knative_service()
    doc["spec"]["template"]["spec"]["securityContext"] = {"runAsNonRooot": True}
    crd_only = validator.crd_validator("serving.knative.dev/v1", "Service")
    assert list(crd_only.iter_errors(doc)) == [], "the CRD schema alone is open there"
    errors = validator.errors(doc)
    assert any("runAsNonRooot" in e and "PodSpec" in e for e in errors), errors


def test_knative_only_pod_fields_are_not_sent_to_the_podspec_pass(
    validator: ManifestValidator,
) -> None:
    assert validator.knative_only_pod_fields >= {"containerConcurrency", "timeoutSeconds"}
    assert "containers" not in validator.knative_only_pod_fields


def test_unknown_field_under_a_preserve_unknown_spec_is_rejected(
    validator: ManifestValidator,
) -> None:
    """Trigger's CRD marks ``spec`` preserve-unknown although it lists its fields."""
    doc = _one("Trigger", "wsm-send")
    doc["spec"]["subscribr"] = doc["spec"]["subscriber"]
    assert any("subscribr" in e for e in validator.errors(doc))


def test_raw_crd_schema_would_have_accepted_the_typo(validator: ManifestValidator) -> None:
    """Why strictness is needed: the published schema prunes instead of rejecting."""
    crd = next(Path(find_crd_dir(REPO)).glob("knative-eventing-trigger.yaml"))
    raw = yaml.safe_load(crd.read_text(encoding="utf-8"))["spec"]["versions"][0]
    doc = _one("Trigger", "wsm-send")
    doc["spec"]["subscribr"] = {}
    plain = jsonschema.Draft4Validator(raw["schema"]["openAPIV3Schema"])
    assert list(plain.iter_errors(doc)) == []
    assert validator.errors(doc)


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"),
    [
        ("Component", "statestore", lambda d: d["spec"].pop("version"), "'version' is a required"),
        ("Component", "statestore", lambda d: d["spec"].update(metdata=[]), "metdata"),
        ("Resiliency", "wsm-resiliency", lambda d: d["spec"].pop("targets"), "'targets'"),
        ("Configuration", "wsm-config", lambda d: d["spec"]["mtls"].pop("sentryAddress"), "sentry"),
        ("Trigger", "wsm-send", lambda d: d["metadata"].update(label={}), "label"),
        ("Broker", "wsm", lambda d: d.update(status={}), "status"),
        ("PingSource", "wsm-reclaim", lambda d: d["spec"].update(schedule=60), "60"),
        (
            "Service",
            "wsm-send",
            lambda d: d["spec"]["template"]["spec"].update(containerConcurrency="100"),
            "'100' is not of type",
        ),
        ("StatefulSet", "wsm-holder", lambda d: d["spec"].update(replica=3), "replica"),
        ("Service", "wsm-holder", lambda d: d["spec"]["ports"][0].update(prot=1), "prot"),
        ("Role", "wsm-secret-reader", lambda d: d["rules"][0].update(verb=["get"]), "verb"),
        ("Namespace", "wsm", lambda d: d.update(kind="Namespaces"), "no schema"),
    ],
)
def test_planted_mistakes_are_rejected(
    validator: ManifestValidator, kind: str, name: str, mutate: Any, expected: str
) -> None:
    doc = _one(kind, name)
    mutate(doc)
    errors = validator.errors(doc)
    assert any(expected in e for e in errors), errors


def test_genuinely_free_form_fields_stay_open(validator: ManifestValidator) -> None:
    """No false positives: filter attributes may name any CloudEvents attribute."""
    doc = _one("Trigger", "wsm-send")
    doc["spec"]["filter"]["attributes"]["websocketid"] = "abc"
    assert validator.errors(doc) == []
    assert validator.free_form_locations(doc) == ["spec.filter.attributes"]
    component = _one("Component", "statestore")
    component["spec"]["metadata"].append({"name": "redisDB", "value": 0})
    assert validator.errors(component) == []


def test_strict_schema_rules() -> None:
    schema = {
        "type": "object",
        "properties": {
            "typed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "listed_but_preserved": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "string"}},
            },
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "pruned": {"type": "object"},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "items": {"type": "array", "items": {"type": "object", "properties": {}}},
            "default": {"type": "object", "default": {"type": "object", "properties": {}}},
        },
    }
    out = strict_schema(schema)
    props = out["properties"]
    assert out["additionalProperties"] is False
    assert props["typed"]["additionalProperties"] is False
    assert props["listed_but_preserved"]["additionalProperties"] is False
    assert props["free"][FREE_FORM] is True and "additionalProperties" not in props["free"]
    assert props["pruned"]["additionalProperties"] is False
    assert props["map"]["additionalProperties"] == {"type": "string"}
    assert props["items"]["items"]["additionalProperties"] is False
    assert props["default"]["default"] == {"type": "object", "properties": {}}, "data untouched"
    assert "additionalProperties" not in schema, "the input is not modified"


def test_missing_crd_dir_fails_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRD_DIR_ENV, str(tmp_path))
    with pytest.raises(CrdDirMissing, match=CRD_DIR_ENV) as info:
        find_crd_dir(REPO)
    assert str(tmp_path) in str(info.value)


def test_crd_dir_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_crd_dir(REPO)
    monkeypatch.setenv(CRD_DIR_ENV, str(real))
    assert find_crd_dir(Path("/nonexistent")) == real
