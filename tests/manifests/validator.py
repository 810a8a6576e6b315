"""Strict, offline validation of Kubernetes manifests (brief §6: unknown fields fail).

Two sources of truth, both offline:

* **Knative and Dapr kinds**: the official CRD schemas in ``../shared/schemas/crds/`` (or
  ``$WSM_CRD_DIR``). An API server *prunes* unknown fields instead of rejecting them, so a plain
  JSON Schema check of a CRD accepts typos. :func:`strict_schema` rewrites a CRD schema so that
  exactly what the server would drop or ignore is an error:

  - an object schema that lists ``properties`` gets ``additionalProperties: false``, *even when*
    it is also marked ``x-kubernetes-preserve-unknown-fields`` (Knative Trigger's ``spec`` and
    ``delivery``, Knative Service's ``template.metadata``): the listed fields are the contract,
    and an unlisted one is stored but never read by the controller;
  - an object schema with neither ``properties`` nor ``additionalProperties`` nor
    preserve-unknown must be empty: the server would prune anything written there;
  - a schema marked preserve-unknown that lists no properties is genuinely free-form (Dapr
    metadata values, Trigger filter attribute maps, the feature-flagged pod fields of a Knative
    Service). It is left open and tagged, and :meth:`ManifestValidator.free_form_locations`
    reports which of them a manifest actually uses, so tests can decide how each is checked;
  - maps (``additionalProperties: {schema}``) keep their value schema;
  - the root gains ``apiVersion``/``kind`` (exact values) and ``metadata`` (Kubernetes'
    ObjectMeta, strict): the eventing CRDs do not list them, the API server owns them.
    ``status`` is dropped: a manifest that sets it is wrong.

  A Knative Service's ``spec.template.spec`` is Knative's subset of a PodSpec; the CRD leaves
  several of its subtrees open (pod ``securityContext``, ``affinity``, env ``fieldRef``, …). So
  that subtree is validated twice: by the strict CRD schema (which knows Knative's subset and its
  own fields) and by Kubernetes' strict PodSpec schema without the Knative-only fields (which
  types the open subtrees).

* **Core kinds** (Namespace, ServiceAccount, Role, RoleBinding, Service, StatefulSet,
  PodDisruptionBudget, Secret): ``kubernetes-validate`` in strict mode (Kubernetes' own OpenAPI
  schemas with ``additionalProperties: false``), for :data:`K8S_VERSION`.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import all_versions
from referencing import Registry, Resource

__all__ = [
    "CORE_KINDS",
    "CRD_DIR_ENV",
    "FREE_FORM",
    "K8S_VERSION",
    "CrdDirMissing",
    "ManifestValidator",
    "find_crd_dir",
    "strict_schema",
]

#: Kubernetes minor version whose schemas validate the core kinds and ObjectMeta/PodSpec.
K8S_VERSION = "1.33"
CRD_DIR_ENV = "WSM_CRD_DIR"
#: Tag put on free-form schema nodes by :func:`strict_schema` (ignored by JSON Schema).
FREE_FORM = "x-wsm-free-form"
PRESERVE = "x-kubernetes-preserve-unknown-fields"
CORE_KINDS = frozenset(
    {
        ("v1", "Namespace"),
        ("v1", "ServiceAccount"),
        ("v1", "Service"),
        ("v1", "Secret"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("apps/v1", "StatefulSet"),
        ("policy/v1", "PodDisruptionBudget"),
    }
)
_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{_DEFS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
POD_SPEC = f"{_DEFS_ID}#/$defs/io.k8s.api.core.v1.PodSpec"
KNATIVE_SERVICE = ("serving.knative.dev/v1", "Service")
_SCHEMA_MAPS = ("properties",)
_SCHEMA_ONE = ("items", "additionalProperties", "not")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


class CrdDirMissing(RuntimeError):
    """The CRD schema folder is not where it should be."""


def find_crd_dir(repo: Path) -> Path:
    """``$WSM_CRD_DIR``, else ``<repo>/../shared/schemas/crds``; raises if it has no CRDs."""
    configured = os.environ.get(CRD_DIR_ENV)
    path = Path(configured) if configured else repo.parent / "shared" / "schemas" / "crds"
    if not path.is_dir() or not any(path.glob("*.yaml")):
        raise CrdDirMissing(
            f"official CRD schemas not found at {path} "
            f"({'from $' + CRD_DIR_ENV if configured else 'default location'}); "
            f"the manifest tests validate Knative and Dapr kinds against them offline. "
            f"Put the folder shared/schemas/crds beside the repository or set {CRD_DIR_ENV}."
        )
    return path


def _is_object(node: Mapping[str, Any]) -> bool:
    return node.get("type") == "object" or "properties" in node


def strict_schema(node: Any) -> Any:
    """A copy of an OpenAPI v3 (CRD) schema in which unknown fields are errors (module doc)."""
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE and isinstance(value, Mapping):
            out[key] = strict_schema(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strict_schema(sub) for sub in value]
        else:  # description, default, enum, required, …: data, not schemas
            out[key] = copy.deepcopy(value)
    if "properties" not in node and node.get(PRESERVE):
        out[FREE_FORM] = True
    elif _is_object(node) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def _k8s_definitions() -> dict[str, Any]:
    """Kubernetes' strict definitions (ObjectMeta, PodSpec, …) shipped with kubernetes-validate."""
    versions = [v for v in all_versions() if re.fullmatch(rf"{re.escape(K8S_VERSION)}\.\d+", v)]
    if not versions:
        raise RuntimeError(f"kubernetes-validate has no schemas for Kubernetes {K8S_VERSION}")
    newest = max(versions, key=lambda v: int(v.rsplit(".", 1)[1]))
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (folder / f"v{newest}-local-strict" / "_definitions.json").read_text(encoding="utf-8")
    defs: dict[str, Any] = json.loads(text)
    return defs


class ManifestValidator:
    """Validates one manifest document at a time; see the module doc for the rules."""

    def __init__(self, crd_dir: Path) -> None:
        self._definitions = _k8s_definitions()
        self._registry: Registry = Resource.from_contents(self._definitions) @ Registry()
        self._crds: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if crd and crd.get("kind") == "CustomResourceDefinition":
                    self._add_crd(crd)
        pod_spec = self._definitions["$defs"]["io.k8s.api.core.v1.PodSpec"]["properties"]
        knative_pod = self._crds[KNATIVE_SERVICE]["properties"]["spec"]["properties"]["template"]
        knative_fields = knative_pod["properties"]["spec"]["properties"]
        #: Fields of Knative's PodSpec that Kubernetes' PodSpec does not have.
        self.knative_only_pod_fields = frozenset(knative_fields) - frozenset(pod_spec)
        self._pod_spec = jsonschema.Draft202012Validator(
            {"$ref": POD_SPEC}, registry=self._registry
        )

    def _add_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        group, kind = spec["group"], spec["names"]["kind"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            api_version = f"{group}/{version['name']}"
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props.pop("status", None)
            props["apiVersion"] = {"type": "string", "enum": [api_version]}
            props["kind"] = {"type": "string", "enum": [kind]}
            props["metadata"] = {"$ref": OBJECT_META}
            schema["required"] = sorted(
                {*schema.get("required", ()), "apiVersion", "kind", "metadata"}
            )
            schema["additionalProperties"] = False
            schema.pop(FREE_FORM, None)
            jsonschema.Draft202012Validator.check_schema(schema)
            self._crds[(api_version, kind)] = schema

    @property
    def crd_kinds(self) -> frozenset[tuple[str, str]]:
        """(apiVersion, kind) of every served CRD version loaded."""
        return frozenset(self._crds)

    def crd_schema(self, api_version: str, kind: str) -> dict[str, Any]:
        """The strict schema used for a CRD kind (for tests of the validator itself)."""
        return self._crds[(api_version, kind)]

    def crd_validator(self, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
        """The strict CRD schema alone, without the PodSpec pass (for tests of the validator)."""
        return jsonschema.Draft202012Validator(
            self._crds[(api_version, kind)], registry=self._registry
        )

    def errors(self, doc: Mapping[str, Any]) -> list[str]:
        """Every reason ``doc`` is invalid, as ``path: message`` lines; empty when valid."""
        key = (str(doc.get("apiVersion")), str(doc.get("kind")))
        if key in self._crds:
            found = [_line(e) for e in self.crd_validator(*key).iter_errors(doc)]
            if key == KNATIVE_SERVICE:
                found += self._knative_pod_errors(doc)
            return sorted(found)
        if key in CORE_KINDS:
            try:
                kubernetes_validate.validate(dict(doc), K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                return [_line(exc)]
            return []
        return [f"<root>: no schema for apiVersion {key[0]!r} kind {key[1]!r}"]

    def _knative_pod_errors(self, doc: Mapping[str, Any]) -> list[str]:
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec")
        if not isinstance(pod, Mapping):
            return []  # the CRD pass reports the missing or mistyped template
        k8s_part = {k: v for k, v in pod.items() if k not in self.knative_only_pod_fields}
        prefix = "spec.template.spec"
        return [
            f"{prefix}{'.' if e.absolute_path else ''}{_path(e)}: (as a Kubernetes PodSpec) "
            f"{e.message}"
            for e in self._pod_spec.iter_errors(k8s_part)
        ]

    def free_form_locations(self, doc: Mapping[str, Any]) -> list[str]:
        """Paths (indices as ``[*]``) where ``doc`` writes into a free-form CRD subtree."""
        key = (str(doc.get("apiVersion")), str(doc.get("kind")))
        if key not in self._crds:
            return []
        return sorted(set(_free_form(self._crds[key], doc, "")))


def _free_form(schema: Mapping[str, Any], value: Any, path: str) -> Iterator[str]:
    if schema.get(FREE_FORM):
        if value not in (None, {}, [], ""):
            yield path
        return
    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, sub_value in value.items():
            sub = props.get(name) or (extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                yield from _free_form(sub, sub_value, f"{path}.{name}" if path else str(name))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            yield from _free_form(schema["items"], item, f"{path}[*]")


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(error: jsonschema.ValidationError) -> str:
    return f"{_path(error) or '<root>'}: {error.message}"
