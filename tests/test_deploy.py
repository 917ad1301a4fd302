"""deploy/: the CRD (against upstream's, field by field), RBAC, the operator Deployment, kustomization.

Every YAML document under deploy/ is validated against the real Kubernetes
JSON schemas shipped by kubernetes-validate; nothing here writes a schema.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml

from skytorch.resources import API_VERSION, GROUP, KIND, PLURAL, SINGULAR, VERSION
from tests.upstream import upstream_crd

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CRD_PATH = DEPLOY / "crds" / "compute.skytorch.dev_computes.yaml"
K8S_VERSION = "1.37.0"


def _documents(path: pathlib.Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifest_files() -> list[pathlib.Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    (doc,) = _documents(CRD_PATH)
    return doc


@pytest.fixture(scope="module")
def upstream() -> dict[str, Any]:
    return upstream_crd()


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_under_deploy_is_valid_kubernetes(path: pathlib.Path) -> None:
    docs = _documents(path)
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = [DEPLOY / r for r in kustomization["resources"]]
    missing = [str(p) for p in listed if not p.is_file()]
    assert not missing, f"kustomization.yaml lists files that do not exist: {missing}"
    assert sorted(listed) == _manifest_files(), "kustomization.yaml must list every manifest under deploy/"
    images = {i["name"] for i in kustomization.get("images", [])}
    deployment = _documents(DEPLOY / "operator" / "deployment.yaml")[0]
    operator_image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[0]
    assert operator_image in images


def test_crd_is_fresh_from_its_generator() -> None:
    result = subprocess.run([sys.executable, str(DEPLOY / "crds" / "generate.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_crd_names_match_upstream_and_the_shared_model(crd: dict[str, Any], upstream: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == upstream["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["group"] == upstream["spec"]["group"] == GROUP
    assert crd["spec"]["names"] == upstream["spec"]["names"]
    assert crd["spec"]["names"]["kind"] == KIND and crd["spec"]["names"]["singular"] == SINGULAR
    assert crd["spec"]["scope"] == upstream["spec"]["scope"] == "Namespaced"
    (ours,), (theirs,) = crd["spec"]["versions"], upstream["spec"]["versions"]
    assert ours["name"] == theirs["name"] == VERSION
    assert API_VERSION == f"{GROUP}/{VERSION}"
    assert ours["served"] and ours["storage"]
    assert ours["subresources"] == theirs["subresources"] == {"status": {}}
    assert ours["additionalPrinterColumns"] == theirs["additionalPrinterColumns"]


def test_crd_name_rules_and_min_properties_match_upstream(crd: dict[str, Any], upstream: dict[str, Any]) -> None:
    ours, theirs = _schema(crd), _schema(upstream)
    assert sorted(r["rule"] for r in ours["x-kubernetes-validations"]) == \
        sorted(r["rule"] for r in theirs["x-kubernetes-validations"])
    assert ours["properties"]["spec"]["minProperties"] == theirs["properties"]["spec"]["minProperties"] == 1
    assert ours["properties"]["status"]["minProperties"] == theirs["properties"]["status"]["minProperties"]


# Keys compared on every node: what a value must look like to be accepted.
_VALIDATION_KEYS = ("type", "x-kubernetes-int-or-string", "pattern", "enum", "format", "minLength", "maxLength",
                    "minimum", "maxItems", "minProperties", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                    "x-kubernetes-preserve-unknown-fields")
# Subtrees that embed Kubernetes types (taken from Kubernetes' own definitions, of a newer release
# than upstream's controller-gen run): there, newer optional fields may appear in ours, and Go-side
# defaults / atomic map markers, which the Kubernetes JSON schemas do not carry, may be absent.
_EMBEDDED = re.compile(r"^\.spec\.(env\[\]\.valueFrom|override\.(affinity|volumes|tolerations|"
                       r"(init)?[cC]ontainers\[\]\.(env|volumeMounts)\[\]\.)|volumeClaimTemplates\[\]\.spec)")


def test_crd_fields_types_and_validation_match_upstream(crd: dict[str, Any], upstream: dict[str, Any]) -> None:
    ours = dict(_walk(_schema(crd)))
    theirs = dict(_walk(_schema(upstream)))
    missing = sorted(p for p in theirs if p not in ours)
    assert not missing, f"fields of the upstream CRD missing from ours: {missing[:20]}"
    extra = sorted(p for p in ours if p not in theirs and not _EMBEDDED.match(p))
    assert not extra, f"fields of ours that upstream does not have: {extra}"
    for path, node in theirs.items():
        mine = ours[path]
        for key in _VALIDATION_KEYS:
            assert mine.get(key) == node.get(key), f"{path}: {key} is {mine.get(key)!r}, upstream {node.get(key)!r}"
        assert sorted(mine.get("required") or []) == sorted(node.get("required") or []), f"{path}: required"
        if not _EMBEDDED.match(path):
            for key in ("default", "x-kubernetes-map-type"):
                assert mine.get(key) == node.get(key), f"{path}: {key}"


def test_our_own_top_level_fields_are_exactly_upstreams(crd: dict[str, Any], upstream: dict[str, Any]) -> None:
    for part in ("spec", "status"):
        assert set(_schema(crd)["properties"][part]["properties"]) == \
            set(_schema(upstream)["properties"][part]["properties"])
    assert set(_schema(crd)["properties"]["spec"]["properties"]) == {
        "image", "command", "args", "env", "labels", "annotations", "suspend", "resources", "override",
        "volumeClaimTemplates"}
    assert _schema(crd)["properties"]["spec"]["properties"]["suspend"]["default"] is False


def _rules(doc: dict[str, Any]) -> list[tuple[set[str], set[str], set[str]]]:
    return [(set(r.get("apiGroups", [])), set(r.get("resources", [])), set(r.get("verbs", []))) for r in doc["rules"]]


def _allows(rules: list[tuple[set[str], set[str], set[str]]], group: str, resource: str, verb: str) -> bool:
    return any(group in g and resource in r and verb in v for g, r, v in rules)


# Every request the operator (and kopf under it) makes, as (API group, resource, verb).
OPERATOR_REQUESTS = [
    (GROUP, PLURAL, "list"), (GROUP, PLURAL, "watch"), (GROUP, PLURAL, "get"), (GROUP, PLURAL, "patch"),
    (GROUP, f"{PLURAL}/status", "patch"),
    ("apps", "statefulsets", "get"), ("apps", "statefulsets", "list"), ("apps", "statefulsets", "watch"),
    ("apps", "statefulsets", "patch"), ("apps", "statefulsets", "create"),
    ("", "services", "patch"), ("", "services", "create"),
    ("", "pods", "list"), ("", "pods", "watch"),
    ("", "events", "create"),
]


def test_operator_role_grants_what_it_uses_and_no_more() -> None:
    (role,) = _documents(DEPLOY / "rbac" / "cluster_role.yaml")
    rules = _rules(role)
    for group, resource, verb in OPERATOR_REQUESTS:
        assert _allows(rules, group, resource, verb), f"the operator needs {verb} on {group}/{resource}"
    for groups, resources, verbs in rules:
        assert "*" not in groups | resources | verbs, "no wildcards in the operator's role"
        assert not verbs & {"delete", "deletecollection", "escalate", "bind", "impersonate"}, \
            f"{resources}: the operator deletes nothing (children go by garbage collection)"
    assert not _allows(rules, "", "secrets", "get"), "the operator never reads Secrets"
    for verb in ("create", "update", "patch"):
        assert not _allows(rules, "", "pods", verb), "pods are read-only to the operator"


def test_aggregate_roles_extend_edit_and_view() -> None:
    docs = {d["metadata"]["name"]: d for d in _documents(DEPLOY / "rbac" / "aggregate_roles.yaml")}
    edit = next(d for d in docs.values() if d["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-edit"))
    view = next(d for d in docs.values() if d["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-view"))
    for verb in ("create", "patch", "delete", "get", "watch"):
        assert _allows(_rules(edit), GROUP, PLURAL, verb)
    assert _allows(_rules(view), GROUP, PLURAL, "watch")
    for verb in ("create", "patch", "delete", "update"):
        assert not _allows(_rules(view), GROUP, PLURAL, verb), "view must stay read-only"


def test_deployment_runs_the_operator_as_its_service_account() -> None:
    (deployment,) = _documents(DEPLOY / "operator" / "deployment.yaml")
    (account,) = _documents(DEPLOY / "rbac" / "service_account.yaml")
    (binding,) = _documents(DEPLOY / "rbac" / "cluster_role_binding.yaml")
    (role,) = _documents(DEPLOY / "rbac" / "cluster_role.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert deployment["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"]} in binding["subjects"]
    assert deployment["spec"]["replicas"] == 1, "kopf runs standalone: one operator only"
    env = {e["name"] for e in pod["containers"][0].get("env", [])}
    assert "SKYTORCH_SERVER_IMAGE" in env


@pytest.mark.parametrize("name", ["Containerfile.server", "Containerfile.operator"])
def test_containerfiles_run_the_packaged_entry_points(name: str) -> None:
    text = (DEPLOY / name).read_text()
    entry = "skytorch.server" if "server" in name else "skytorch.operator"
    assert re.search(rf'ENTRYPOINT \["python", "-m", "{re.escape(entry)}"\]', text)
    assert "USER 65532" in text, "images run as a non-root user"
    if name == "Containerfile.server":
        assert "ARG TORCH_VARIANT=cpu" in text and "download.pytorch.org/whl/${TORCH_VARIANT}" in text
        assert "50051" in text
    else:
        instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "pip install --no-deps ." in instructions
        assert "torch" not in instructions.replace("skytorch", ""), "the operator image needs no torch"
