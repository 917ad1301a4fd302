"""The real operator (kopf) against the API emulator over HTTP on loopback.

The test plays the parts of the cluster the emulator has no controllers for:
it marks a StatefulSet's replicas ready and reports a pod's container states.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from skytorch.operator import manifests
from skytorch.resources import API_VERSION, DEFAULT_PORT, KIND, OPERATOR_FIELD_MANAGER
from tests.plugins.operator import TEST_SERVER_IMAGE, load_crd_schema, poll, validate_compute

pytestmark = pytest.mark.timeout(120)

NS = "default"
K8S_VERSION = "1.37.0"


def make_compute(emulator: Any, name: str, **spec: Any) -> dict[str, Any]:
    return emulator.create({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": NS},
                            "spec": {"suspend": False, **spec}}, manager="skytorch-python-client")


def get_compute(emulator: Any, name: str) -> dict[str, Any]:
    return emulator.get(API_VERSION, KIND, name, NS)


def condition(emulator: Any, name: str, type_: str) -> dict[str, Any] | None:
    obj = get_compute(emulator, name) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def wait_condition(emulator: Any, name: str, type_: str, status: str, reason: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = condition(emulator, name, type_)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return cond
        return None
    return poll(check, what=f"{name}: {type_}={status} {reason or ''}; now {condition(emulator, name, type_)}")


def events(emulator: Any, name: str, reason: str | None = None, type_: str | None = None) -> list[dict[str, Any]]:
    return [e for e in emulator.list("v1", "Event", NS)
            if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == KIND
            and (reason is None or e["reason"] == reason) and (type_ is None or e["type"] == type_)]


def wait_event(emulator: Any, name: str, reason: str, type_: str = "Normal") -> dict[str, Any]:
    found = poll(lambda: events(emulator, name, reason, type_),
                 what=f"a {type_} {reason} event on {name}; events so far: "
                      f"{[(e['type'], e['reason']) for e in events(emulator, name)]}")
    return found[0]


def mark_ready(emulator: Any, name: str, ready: int) -> None:
    """Play the StatefulSet controller: report ``ready`` ready replicas."""
    sts = emulator.get("apps/v1", "StatefulSet", name, NS)
    emulator.patch("apps/v1", "StatefulSet", name, {"status": {
        "replicas": sts["spec"]["replicas"], "readyReplicas": ready, "availableReplicas": ready,
        "observedGeneration": sts["metadata"].get("generation", 1)}}, NS, subresource="status",
        manager="kube-controller-manager")


def without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


def test_a_compute_becomes_a_statefulset_and_a_service_it_owns(kube_emulator: Any, skytorch_operator: Any) -> None:
    compute = make_compute(kube_emulator, "alpha", image="registry.test/custom:1", env=[{"name": "A", "value": "1"}],
                           labels={"team": "ml"}, resources={"cpu": "1"})
    sts = poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "alpha", NS), what="the StatefulSet")
    svc = poll(lambda: kube_emulator.get("v1", "Service", "alpha", NS), what="the Service")

    owner = {"apiVersion": API_VERSION, "kind": KIND, "name": "alpha", "uid": compute["metadata"]["uid"],
             "controller": True, "blockOwnerDeletion": True}
    for child in (sts, svc):
        assert child["metadata"]["ownerReferences"] == [owner]
        managers = {(m["manager"], m["operation"]) for m in child["metadata"]["managedFields"]}
        assert (OPERATOR_FIELD_MANAGER, "Apply") in managers, "applied with server-side apply by the operator"
        kubernetes_validate.validate(without_server_fields(child), K8S_VERSION, strict=True)

    assert sts["spec"]["replicas"] == 1
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "server" and container["image"] == "registry.test/custom:1"
    assert {"name": "A", "value": "1"} in container["env"]
    assert container["resources"]["limits"] == {"cpu": "1"}
    assert container["readinessProbe"]["grpc"]["port"] == DEFAULT_PORT
    assert sts["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert svc["spec"]["ports"][0]["port"] == DEFAULT_PORT and svc["spec"]["ports"][0]["name"] == "grpc"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()

    created = wait_event(kube_emulator, "alpha", "Created")
    assert created["involvedObject"]["uid"] == compute["metadata"]["uid"]
    ready = wait_condition(kube_emulator, "alpha", "Ready", "False", "StatefulSetNotReady")
    assert ready["message"] == "0/1 replicas ready"
    stored = get_compute(kube_emulator, "alpha")
    validate_compute(stored, load_crd_schema())  # the status the operator wrote is valid per the CRD
    status = stored["status"]
    assert status["addresses"] == [{"type": "Hostname", "value": "alpha.default.svc.cluster.local"}]
    assert not get_compute(kube_emulator, "alpha")["metadata"].get("finalizers"), \
        "no finalizer: deleting a Compute never waits for the operator"


def test_default_image_when_the_spec_names_none(kube_emulator: Any, skytorch_operator: Any) -> None:
    make_compute(kube_emulator, "plain")
    sts = poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "plain", NS), what="the StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == TEST_SERVER_IMAGE


def test_ready_replicas_make_the_compute_ready_once(kube_emulator: Any, skytorch_operator: Any) -> None:
    make_compute(kube_emulator, "beta")
    wait_condition(kube_emulator, "beta", "Ready", "False", "StatefulSetNotReady")
    mark_ready(kube_emulator, "beta", 1)
    ready = wait_condition(kube_emulator, "beta", "Ready", "True", "StatefulSetReady")
    assert ready["message"] == "1/1 replicas ready"
    wait_event(kube_emulator, "beta", "Ready")

    # StatefulSet changes that change nothing for the Compute write no status and post no event.
    status_writes = len(kube_emulator.requests_made("PATCH", r"/computes/beta/status$"))
    reads = len(kube_emulator.requests_made("GET", r"/computes/beta$"))
    for touch in ("1", "2"):
        kube_emulator.patch("apps/v1", "StatefulSet", "beta", {"metadata": {"annotations": {"touched": touch}}}, NS)
    # The operator re-reads the Compute on each StatefulSet event: wait until it has looked at both.
    poll(lambda: len(kube_emulator.requests_made("GET", r"/computes/beta$")) >= reads + 2,
         what="the operator to look at both changes")
    assert len(kube_emulator.requests_made("PATCH", r"/computes/beta/status$")) == status_writes
    assert len(events(kube_emulator, "beta", "Ready")) == 1
    assert condition(kube_emulator, "beta", "Ready")["lastTransitionTime"] == ready["lastTransitionTime"]


def test_suspend_scales_to_zero_and_resume_scales_back(kube_emulator: Any, skytorch_operator: Any) -> None:
    make_compute(kube_emulator, "gamma")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "gamma", NS), what="the StatefulSet")
    mark_ready(kube_emulator, "gamma", 1)
    wait_condition(kube_emulator, "gamma", "Ready", "True")

    kube_emulator.patch(API_VERSION, KIND, "gamma", {"spec": {"suspend": True}}, NS, manager="skytorch-python-client")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "gamma", NS)["spec"]["replicas"] == 0,
         what="replicas 0")
    mark_ready(kube_emulator, "gamma", 0)
    suspended = wait_condition(kube_emulator, "gamma", "Suspended", "True", "Suspended")
    assert suspended["message"]
    wait_condition(kube_emulator, "gamma", "Ready", "False")
    wait_event(kube_emulator, "gamma", "Suspended")

    kube_emulator.patch(API_VERSION, KIND, "gamma", {"spec": {"suspend": False}}, NS, manager="skytorch-python-client")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "gamma", NS)["spec"]["replicas"] == 1,
         what="replicas 1")
    wait_condition(kube_emulator, "gamma", "Suspended", "False", "Resumed")
    wait_event(kube_emulator, "gamma", "Resumed")
    mark_ready(kube_emulator, "gamma", 1)
    wait_condition(kube_emulator, "gamma", "Ready", "True")
    assert len(events(kube_emulator, "gamma", "Ready")) == 2, "ready, suspended, ready again"


def test_a_compute_that_cannot_be_honoured_gets_a_warning_and_others_are_served(
        kube_emulator: Any, skytorch_operator: Any) -> None:
    make_compute(kube_emulator, "broken", image="")
    make_compute(kube_emulator, "mismatched", override={"containers": [{"name": "sidecar"}]})
    make_compute(kube_emulator, "healthy")

    warning = wait_event(kube_emulator, "broken", "InvalidImage", "Warning")
    assert "spec.image" in warning["message"]
    cond = wait_condition(kube_emulator, "broken", "Ready", "False", "InvalidImage")
    assert "spec.image" in cond["message"]
    assert kube_emulator.get("apps/v1", "StatefulSet", "broken", NS) is None
    wait_event(kube_emulator, "mismatched", "InvalidOverride", "Warning")
    wait_condition(kube_emulator, "mismatched", "Ready", "False", "InvalidOverride")

    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "healthy", NS), what="the healthy Compute's StatefulSet")
    mark_ready(kube_emulator, "healthy", 1)
    wait_condition(kube_emulator, "healthy", "Ready", "True")
    assert skytorch_operator.alive

    # Fixing the spec is enough: the operator reconciles it.
    kube_emulator.patch(API_VERSION, KIND, "broken", {"spec": {"image": "registry.test/fixed:1"}}, NS,
                        manager="skytorch-python-client")
    sts = poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "broken", NS), what="the fixed StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/fixed:1"
    wait_condition(kube_emulator, "broken", "Ready", "False", "StatefulSetNotReady")


def test_an_apply_the_api_rejects_is_a_warning_not_a_crash(kube_emulator: Any, skytorch_operator: Any) -> None:
    kube_emulator.fail("PATCH", r"/statefulsets/rejected$", 422,
                       message='StatefulSet.apps "rejected" is invalid: spec.template.spec.containers[0].resources')
    make_compute(kube_emulator, "rejected")
    warning = wait_event(kube_emulator, "rejected", "ApplyFailed", "Warning")
    assert "422" in warning["message"] and "is invalid" in warning["message"]
    wait_condition(kube_emulator, "rejected", "Ready", "False", "ApplyFailed")
    make_compute(kube_emulator, "accepted")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "accepted", NS), what="the next Compute served")
    assert skytorch_operator.alive


def test_a_transient_api_error_is_retried(kube_emulator: Any, skytorch_operator: Any) -> None:
    kube_emulator.fail("PATCH", r"/statefulsets/flaky$", 500, times=2)
    make_compute(kube_emulator, "flaky")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "flaky", NS), what="the StatefulSet after retries")
    wait_event(kube_emulator, "flaky", "Created")
    assert not events(kube_emulator, "flaky", type_="Warning")


@pytest.mark.parametrize("reason,message", [
    ("ImagePullBackOff", 'Back-off pulling image "registry.test/missing:1"'),
    ("CrashLoopBackOff", "back-off 10s restarting failed container=server"),
])
def test_pod_failures_become_warnings_on_the_compute(kube_emulator: Any, skytorch_operator: Any, reason: str,
                                                     message: str) -> None:
    make_compute(kube_emulator, "delta")
    sts = poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "delta", NS), what="the StatefulSet")
    template = sts["spec"]["template"]
    kube_emulator.create({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": "delta-0", "namespace": NS, "labels": template["metadata"]["labels"]},
                                "spec": template["spec"]}, manager="kube-controller-manager")
    waiting = {"containerStatuses": [{"name": "server", "ready": False, "restartCount": 3, "image": "x",
                                      "imageID": "", "state": {"waiting": {"reason": reason, "message": message}}}]}
    kube_emulator.patch("v1", "Pod", "delta-0", {"status": waiting}, NS, subresource="status", manager="kubelet")
    warning = wait_event(kube_emulator, "delta", reason, "Warning")
    assert "delta-0" in warning["message"] and message in warning["message"]
    # The same state seen again is not a new warning.
    kube_emulator.patch("v1", "Pod", "delta-0", {"metadata": {"annotations": {"seen": "again"}}}, NS)
    kube_emulator.patch("v1", "Pod", "delta-0", {"status": waiting}, NS, subresource="status", manager="kubelet")
    kube_emulator.patch(API_VERSION, KIND, "delta", {"spec": {"image": "registry.test/other:1"}}, NS,
                        manager="skytorch-python-client")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "delta", NS)["spec"]["template"]["spec"]["containers"][0]
         ["image"] == "registry.test/other:1", what="a later reconcile")
    assert len(events(kube_emulator, "delta", reason, "Warning")) == 1


def test_deleting_a_compute_deletes_its_children(kube_emulator: Any, skytorch_operator: Any) -> None:
    make_compute(kube_emulator, "epsilon")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "epsilon", NS), what="the StatefulSet")
    poll(lambda: kube_emulator.get("v1", "Service", "epsilon", NS), what="the Service")
    kube_emulator.delete(API_VERSION, KIND, "epsilon", NS)
    poll(lambda: get_compute(kube_emulator, "epsilon") is None, what="the Compute gone")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "epsilon", NS) is None, what="the StatefulSet collected")
    poll(lambda: kube_emulator.get("v1", "Service", "epsilon", NS) is None, what="the Service collected")
    assert skytorch_operator.alive


def test_the_operator_resumes_existing_computes_at_start(kube_emulator: Any, operator_config: Any) -> None:
    from tests.plugins.operator import OperatorThread

    make_compute(kube_emulator, "zeta")
    operator = OperatorThread(operator_config).start()
    try:
        poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "zeta", NS), what="the StatefulSet")
        wait_event(kube_emulator, "zeta", "Created")
    finally:
        operator.stop()
    assert operator.error is None
    # Restarted: the StatefulSet exists already, so no second Created event.
    operator = OperatorThread(operator_config).start()
    try:
        mark_ready(kube_emulator, "zeta", 1)
        wait_condition(kube_emulator, "zeta", "Ready", "True")
    finally:
        operator.stop()
    assert len(events(kube_emulator, "zeta", "Created")) == 1
    assert manifests.INSTANCE_LABEL in kube_emulator.get("apps/v1", "StatefulSet", "zeta", NS)["metadata"]["labels"]
