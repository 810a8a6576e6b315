"""Fixtures of the manifest tests: the strict validator (built once) and the manifests."""

from __future__ import annotations

import pytest

from tests.manifests.manifests import REPO, Manifest, load_manifests
from tests.manifests.validator import CrdDirMissing, ManifestValidator, find_crd_dir


@pytest.fixture(scope="session")
def validator() -> ManifestValidator:
    """Fails (never skips) without the CRD schemas: CI runs with them present."""
    try:
        crd_dir = find_crd_dir(REPO)
    except CrdDirMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return ManifestValidator(crd_dir)


@pytest.fixture(scope="session")
def manifests() -> list[Manifest]:
    return load_manifests()
