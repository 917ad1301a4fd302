"""The upstream SkyTorch CRD, our wire-compatibility reference.

It ships with the project's shared files, beside the clone (``../shared/compat``),
on every developer machine and in CI. A test that needs it fails when it is
missing rather than skipping: a compatibility check that silently does not run
proves nothing.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

UPSTREAM_CRD = pathlib.Path(__file__).resolve().parents[2] / "shared" / "compat" / "compute.skytorch.dev_computes.yaml"


def upstream_crd() -> dict[str, Any]:
    """The upstream CRD document (fails the test, naming the path, when it is not there)."""
    if not UPSTREAM_CRD.is_file():
        pytest.fail(f"the upstream reference CRD {UPSTREAM_CRD} is missing; it ships with the project's shared files")
    (doc,) = [d for d in yaml.safe_load_all(UPSTREAM_CRD.read_text()) if d]
    return doc


def upstream_schema() -> dict[str, Any]:
    """The upstream CRD's ``openAPIV3Schema`` of ``v1alpha1``."""
    [version] = [v for v in upstream_crd()["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]
