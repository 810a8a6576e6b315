"""Loading the repository's manifests: ``dapr-components/**`` and ``knative/**``.

YAML is read with a loader that refuses duplicate mapping keys (PyYAML silently keeps the last
one, which would hide a typo as well as any unknown field would).

Three sets: **cluster** (``dapr-components/*.yaml`` and ``knative/*.yaml``: what
``kubectl apply -f`` applies), **local** (``dapr-components/local/``: what ``dapr run`` loads)
and **examples** (``knative/examples/``: reference Secrets, never applied as they are).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["REPO", "Manifest", "load_manifests"]

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("dapr-components", "knative")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that raises on a key repeated within one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class Manifest:
    """One YAML document of one manifest file."""

    path: Path
    index: int
    doc: Mapping[str, Any]

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO).as_posix()

    @property
    def api_version(self) -> str:
        return str(self.doc.get("apiVersion"))

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind"))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name"))

    @property
    def namespace(self) -> str | None:
        value = (self.doc.get("metadata") or {}).get("namespace")
        return None if value is None else str(value)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.doc.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def group_set(self) -> str:
        """``cluster``, ``local`` or ``examples`` (module doc)."""
        parts = self.path.relative_to(REPO).parts
        if parts[:2] == ("dapr-components", "local"):
            return "local"
        if parts[:2] == ("knative", "examples"):
            return "examples"
        return "cluster"

    def __str__(self) -> str:
        return f"{self.rel}#{self.index} {self.kind}/{self.name}"


def _files() -> Iterator[Path]:
    for root in ROOTS:
        folder = REPO / root
        for pattern in ("*.yaml", "*.yml"):
            yield from folder.rglob(pattern)


def load_manifests() -> list[Manifest]:
    """Every non-empty document, in path order. YAML errors propagate (naming the file)."""
    found: list[Manifest] = []
    for path in sorted(set(_files())):
        text = path.read_text(encoding="utf-8")
        docs = yaml.load_all(text, Loader=_UniqueKeyLoader)
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, Mapping):
                raise TypeError(f"{path}#{index}: a manifest must be a mapping, got {doc!r}")
            found.append(Manifest(path, index, doc))
    return found
