"""The operator's pure builders: StatefulSet, Service and status, checked against real schemas.

Manifests are validated with kubernetes-validate (the real Kubernetes JSON
schemas); Compute objects and statuses with the CRD's own openAPIV3Schema.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from skytorch.operator import InvalidComputeSpec, OperatorConfig
from skytorch.operator import manifests, status
from skytorch.operator.settings import OperatorConfigError
from skytorch.resources import API_VERSION, DEFAULT_PORT, KIND, ComputeSpec, apply_manifest
from tests.plugins.operator import load_crd_schema, validate_compute

K8S_VERSION = "1.37.0"
CONFIG = OperatorConfig(server_image="registry.test/skytorch-server:default")


def compute(name: str = "my-compute", namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    """A Compute as the API returns it."""
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": "0b8f6f5e-1111-2222-3333-444455556666",
                         "generation": 3},
            "spec": {"suspend": False, **spec}}


FULL_SPEC: dict[str, Any] = {
    "image": "registry.test/skytorch-server:1.0",
    "command": ["python", "-m", "skytorch.server"],
    "args": ["--log-level", "DEBUG"],
    "env": [{"name": "CHUNK_SIZE", "value": "2097152"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    "labels": {"team": "ml"},
    "annotations": {"example.com/owner": "alice"},
    "resources": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1},
    "override": {
        "nodeSelector": {"accelerator": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "regcred"}],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containers": [{"name": "server", "env": [{"name": "CHUNK_SIZE", "value": "4194304"}],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                         {"name": "data", "mountPath": "/data"}]}],
    },
    "volumeClaimTemplates": [{"metadata": {"name": "data"},
                              "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}],
}


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    return load_crd_schema()


# -- StatefulSet and Service ----------------------------------------------------------------------


def test_full_spec_becomes_a_valid_statefulset_carrying_every_field() -> None:
    sts = manifests.statefulset(compute(**copy.deepcopy(FULL_SPEC)), CONFIG)
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)

    assert sts["metadata"]["name"] == "my-compute" and sts["metadata"]["namespace"] == "team-a"
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == "my-compute"
    pod = sts["spec"]["template"]
    selector = sts["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "alice"}
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "server"
    assert container["image"] == "registry.test/skytorch-server:1.0"
    assert container["command"] == FULL_SPEC["command"] and container["args"] == FULL_SPEC["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CHUNK_SIZE"]["value"] == "4194304", "the container override wins over spec.env"
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert len(container["env"]) == len(env), "no duplicate env names"
    assert container["resources"] == {"requests": FULL_SPEC["resources"], "limits": FULL_SPEC["resources"]}
    assert container["ports"] == [{"name": "grpc", "containerPort": DEFAULT_PORT, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"] == {"port": DEFAULT_PORT}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/scratch", "/data"}
    spec = pod["spec"]
    override = FULL_SPEC["override"]
    for field in ("nodeSelector", "tolerations", "affinity", "serviceAccountName", "imagePullSecrets", "volumes"):
        assert spec[field] == override[field], field
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_children_are_owned_by_the_compute_as_controller() -> None:
    obj = compute()
    for manifest in (manifests.statefulset(obj, CONFIG), manifests.service(obj)):
        assert manifest["metadata"]["ownerReferences"] == [{
            "apiVersion": API_VERSION, "kind": KIND, "name": "my-compute", "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]


def test_minimal_spec_uses_the_default_image_and_suspend_scales_to_zero() -> None:
    sts = manifests.statefulset(compute(), CONFIG)
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == CONFIG.server_image
    assert "resources" not in sts["spec"]["template"]["spec"]["containers"][0]
    suspended = manifests.statefulset(compute(suspend=True), CONFIG)
    kubernetes_validate.validate(suspended, K8S_VERSION, strict=True)
    assert suspended["spec"]["replicas"] == 0


def test_the_client_apply_body_becomes_a_valid_statefulset() -> None:
    body = apply_manifest("from-client", "team-a", ComputeSpec(image="img:1", env=[{"name": "A", "value": "1"}],
                                                                labels={"team": "ml"}))
    body["metadata"]["uid"] = "uid-1"
    kubernetes_validate.validate(manifests.statefulset(body, CONFIG), K8S_VERSION, strict=True)


def test_user_labels_cannot_take_over_the_selector() -> None:
    sts = manifests.statefulset(compute(labels={manifests.INSTANCE_LABEL: "someone-else", "team": "ml"}), CONFIG)
    assert sts["spec"]["template"]["metadata"]["labels"][manifests.INSTANCE_LABEL] == "my-compute"
    assert sts["spec"]["selector"]["matchLabels"][manifests.INSTANCE_LABEL] == "my-compute"


def test_service_is_valid_and_selects_the_pod_on_the_grpc_port() -> None:
    obj = compute(**copy.deepcopy(FULL_SPEC))
    svc = manifests.service(obj)
    kubernetes_validate.validate(svc, K8S_VERSION, strict=True)
    sts = manifests.statefulset(obj, CONFIG)
    assert svc["metadata"]["name"] == "my-compute"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "grpc", "port": DEFAULT_PORT, "targetPort": "grpc", "protocol": "TCP",
                                     "appProtocol": "grpc"}]


BAD_SPECS = [
    ("empty image", {"image": ""}, "InvalidImage", "spec.image"),
    ("image with spaces", {"image": "my image"}, "InvalidImage", "spec.image"),
    ("negative cpu", {"resources": {"cpu": "-1"}}, "InvalidResources", "spec.resources.cpu"),
    ("unknown resource name", {"resources": {"gpu": 1}}, "InvalidResources", "spec.resources.gpu"),
    ("fractional gpu", {"resources": {"nvidia.com/gpu": "0.5"}}, "InvalidResources", "spec.resources.nvidia.com/gpu"),
    ("nodeSelector of the wrong shape", {"override": {"nodeSelector": ["a", "b"]}}, "InvalidOverride",
     "spec.override.nodeSelector"),
    ("override of a container that does not exist", {"override": {"containers": [{"name": "sidecar"}]}},
     "InvalidOverride", "spec.override.containers[0].name"),
    ("init container override with no init container", {"override": {"initContainers": [{"name": "init"}]}},
     "InvalidOverride", "spec.override.initContainers"),
    ("mount of an unknown volume",
     {"override": {"containers": [{"name": "server", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}},
     "InvalidOverride", "volumeMounts[0]"),
    ("invalid label value", {"labels": {"team": "not a label value"}}, "InvalidSpec", "spec.labels.team"),
    ("env entry without a name", {"env": [{"value": "x"}]}, "InvalidSpec", "spec.env[0].name"),
]


@pytest.mark.parametrize("spec,reason,field", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_specs_that_cannot_be_honoured_raise_a_clear_error(spec: dict[str, Any], reason: str, field: str) -> None:
    with pytest.raises(InvalidComputeSpec) as info:
        manifests.statefulset(compute(**spec), CONFIG)
    assert info.value.reason == reason
    assert field in str(info.value)
    assert "team-a/my-compute" in str(info.value) and info.value.compute == "team-a/my-compute"
    assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", info.value.reason), "a valid condition reason"


@pytest.mark.parametrize("text,value", [("500m", "0.5"), ("2", "2"), ("1Gi", str(2**30)), ("1.5k", "1500"),
                                        ("1e3", "1000"), (4, "4"), ("-1", "-1")])
def test_parse_quantity(text: Any, value: str) -> None:
    assert manifests.parse_quantity(text) == manifests.decimal.Decimal(value)


@pytest.mark.parametrize("text", ["lots", "1GB", "", None, True, "1.2.3"])
def test_parse_quantity_rejects_garbage(text: Any) -> None:
    with pytest.raises(ValueError):
        manifests.parse_quantity(text)


# -- The CRD accepts what the client sends and rejects what upstream rejects -----------------------


def test_crd_accepts_full_and_minimal_computes(crd_schema: dict[str, Any]) -> None:
    validate_compute(compute(**copy.deepcopy(FULL_SPEC)), crd_schema)
    validate_compute(apply_manifest("minimal", "default", ComputeSpec()), crd_schema)


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(spec={}),
    lambda c: c["metadata"].update(name="Not_A_Label"),
    lambda c: c["metadata"].update(name="a" * 64),
    lambda c: c["spec"].update(resources={"cpu": "lots"}),
    lambda c: c["spec"].update(env=[{"value": "no name"}]),
    lambda c: c["spec"].update(suspend="yes"),
    lambda c: c["spec"].update(command="python"),
], ids=["empty spec", "bad name", "long name", "bad quantity", "env without name", "suspend not bool",
        "command not a list"])
def test_crd_rejects_invalid_computes(crd_schema: dict[str, Any], mutate: Any) -> None:
    obj = compute()
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate_compute(obj, crd_schema)


# -- Status ---------------------------------------------------------------------------------------


def sts_with(replicas: int, ready: int) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": ready, "replicas": replicas}}


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st["conditions"]}


def test_ready_follows_the_statefulset(crd_schema: dict[str, Any]) -> None:
    obj = compute()
    for sts, expected, reason, message in [
        (None, "False", "StatefulSetNotAvailable", "StatefulSet is not available"),
        (sts_with(1, 0), "False", "StatefulSetNotReady", "0/1 replicas ready"),
        (sts_with(1, 1), "True", "StatefulSetReady", "1/1 replicas ready"),
    ]:
        st = status.desired_status(obj, sts, failure=None, hostname="h")
        jsonschema.Draft4Validator(crd_schema["properties"]["status"]).validate(st)
        ready = conditions(st)["Ready"]
        assert (ready["status"], ready["reason"], ready["message"]) == (expected, reason, message)
        assert ready["observedGeneration"] == 3
        assert st["addresses"] == [{"type": "Hostname", "value": "h"}]


def test_a_ready_count_from_an_older_generation_is_not_trusted() -> None:
    stale = {"metadata": {"generation": 4}, "spec": {"replicas": 1},
             "status": {"readyReplicas": 1, "replicas": 1, "observedGeneration": 3}}
    ready = status.ready_condition(stale)
    assert (ready.status, ready.reason) == ("False", "StatefulSetNotReady")
    stale["status"]["observedGeneration"] = 4
    assert status.ready_condition(stale).status == "True"


def test_transition_time_is_kept_while_status_is_unchanged() -> None:
    obj = compute()
    first = status.desired_status(obj, sts_with(1, 0), failure=None, hostname="h", now="2024-01-01T00:00:00Z")
    obj["status"] = first
    same = status.desired_status(obj, sts_with(1, 0), failure=None, hostname="h", now="2024-01-01T00:05:00Z")
    assert same == first, "nothing changed: nothing to write"
    ready = status.desired_status(obj, sts_with(1, 1), failure=None, hostname="h", now="2024-01-01T00:06:00Z")
    assert conditions(ready)["Ready"]["lastTransitionTime"] == "2024-01-01T00:06:00Z"
    assert [t.type for t in status.transitions(first, ready)] == ["Ready"]
    assert status.transitions(first, same) == []


def test_suspended_appears_on_suspend_and_turns_resumed() -> None:
    obj = compute()
    st = status.desired_status(obj, sts_with(1, 1), failure=None, hostname="h")
    assert "Suspended" not in conditions(st), "never suspended: no Suspended condition (as upstream)"
    obj["status"], obj["spec"]["suspend"] = st, True
    st = status.desired_status(obj, sts_with(0, 0), failure=None, hostname="h")
    assert (conditions(st)["Suspended"]["status"], conditions(st)["Suspended"]["reason"]) == ("True", "Suspended")
    assert conditions(st)["Ready"]["status"] == "False"
    obj["status"], obj["spec"]["suspend"] = st, False
    resumed = status.desired_status(obj, sts_with(1, 0), failure=None, hostname="h")
    assert (conditions(resumed)["Suspended"]["status"], conditions(resumed)["Suspended"]["reason"]) == \
        ("False", "Resumed")
    assert [(t.type, t.reason) for t in status.transitions(st, resumed)] == [("Suspended", "Resumed")]


def test_a_failure_makes_ready_false_with_its_reason(crd_schema: dict[str, Any]) -> None:
    failure = status.Failure("InvalidImage", "Compute team-a/my-compute: spec.image '' is not an image")
    st = status.desired_status(compute(), sts_with(1, 1), failure=failure, hostname="h")
    jsonschema.Draft4Validator(crd_schema["properties"]["status"]).validate(st)
    assert conditions(st)["Ready"]["status"] == "False" and conditions(st)["Ready"]["reason"] == "InvalidImage"


# -- Settings -------------------------------------------------------------------------------------


def test_settings_come_from_the_environment_and_arguments_win() -> None:
    env = {"SKYTORCH_SERVER_IMAGE": "img:env", "SKYTORCH_OPERATOR_NAMESPACES": "a, b", "SKYTORCH_CLUSTER_DOMAIN": "k"}
    config = OperatorConfig.from_env(env)
    assert (config.server_image, config.namespaces, config.cluster_domain) == ("img:env", ("a", "b"), "k")
    assert OperatorConfig.from_env(env, server_image="img:arg", namespaces=["c"]).server_image == "img:arg"
    assert OperatorConfig.from_env({}).namespaces == (), "no namespaces: cluster-wide"
    with pytest.raises(OperatorConfigError, match="SKYTORCH_SERVER_IMAGE"):
        OperatorConfig(server_image=" ")
