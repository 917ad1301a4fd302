"""The public API surface: validation before any I/O, init() once, log_event levels, Cluster as a sequence."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import skytorch.client as client
from skytorch.client import Cluster, Compute, ComputeSpecError, init, log_event
from skytorch.client import _config
from tests.plugins.client import REPO, server_children


@pytest.mark.parametrize("name, problem", [
    ("", "non-empty"),
    ("Upper", "RFC 1035"),
    ("1starts-with-digit", "RFC 1035"),
    ("ends-with-dash-", "RFC 1035"),
    ("under_score", "RFC 1035"),
    ("a" * 64, "at most 63"),
    (None, "non-empty string"),
])
def test_invalid_names_fail_before_any_io(local_client, name, problem):
    with pytest.raises(ValueError, match=problem) as info:
        Compute(name)
    assert isinstance(info.value, ComputeSpecError)
    assert _config.resolved_backend() is None  # no configuration was even resolved
    assert server_children() == []


def test_a_63_character_name_is_valid():
    from skytorch.resources import validate_name

    assert validate_name("a" * 63) == "a" * 63


@pytest.mark.parametrize("kwargs, problem", [
    ({"env": {"A": 1}}, "env keys and values must be strings"),
    ({"env": ["A=1"]}, "env must be a mapping"),
    ({"command": "python -m x"}, "command must be a list of strings"),
    ({"args": ["--a", 2]}, "every item of args must be a string"),
    ({"port": 0}, "port must be an integer in 1..65535"),
    ({"port": "50051"}, "port must be an integer"),
    ({"image": ""}, "image must be a non-empty string"),
    ({"on_events": "log"}, "on_events must be callable"),
    ({"resources": {"memory": 8.5}}, r"resources\['memory'\] must be a quantity"),
    ({"resources": "8Gi"}, "resources must be a mapping"),
    ({"suspend": "yes"}, "suspend must be True or False"),
    ({"labels": {"team": 1}}, "labels keys and values must be strings"),
])
def test_bad_settings_name_the_compute_and_the_problem(local_client, kwargs, problem):
    with pytest.raises(ComputeSpecError, match=problem) as info:
        Compute("my-compute", **kwargs)
    assert "my-compute" in str(info.value) and info.value.compute == "my-compute"
    assert _config.resolved_backend() is None


def test_init_once_only(client_env):
    init(namespace="team-a")
    with pytest.raises(RuntimeError, match="only be called once"):
        init(namespace="team-b")
    assert _config.configured_namespace() == "team-a"


def test_init_after_auto_initialisation_raises(local_client):
    compute = Compute("auto-init")  # outside a loop: applied (and auto-initialised) before returning
    try:
        with pytest.raises(RuntimeError, match="before any Compute"):
            init(namespace="late")
    finally:
        from skytorch.client._sync import run_sync

        run_sync(compute.delete(grace_period_seconds=5))


def test_init_rejects_an_invalid_namespace(client_env):
    with pytest.raises(ValueError, match="Bad_NS"):
        init(namespace="Bad_NS")
    init(namespace="fine")  # the failed call did not count


@pytest.mark.parametrize("type_, level", [("Normal", logging.INFO), ("Warning", logging.WARNING),
                                          ("Error", logging.ERROR), (None, logging.ERROR)])
def test_log_event_levels(caplog, type_, level):
    from kubernetes_asyncio.client.models import CoreV1Event, V1ObjectMeta, V1ObjectReference

    event = CoreV1Event(
        metadata=V1ObjectMeta(name="ev-1", namespace="ns"),
        involved_object=V1ObjectReference(kind="Compute", name="my-compute", namespace="ns"),
        reason="BackOff", message="Back-off restarting failed container", type=type_,
    )
    caplog.set_level(logging.DEBUG, logger="skytorch.client.events")
    log_event(event)
    (record,) = [r for r in caplog.records if r.name == "skytorch.client.events"]
    assert record.levelno == level
    text = record.getMessage()
    assert "my-compute" in text and "BackOff" in text and "Back-off restarting failed container" in text


def test_log_event_accepts_the_dict_form(caplog):
    caplog.set_level(logging.INFO, logger="skytorch.client.events")
    log_event({"type": "Normal", "reason": "Ready", "message": "1/1 replicas ready",
               "involvedObject": {"kind": "Compute", "name": "c1", "namespace": "default"}})
    assert "default/c1" in caplog.text and "Ready" in caplog.text and "1/1 replicas ready" in caplog.text


def test_cluster_is_a_sequence_and_rejects_bad_members(local_client):
    a, b = Compute("seq-a", suspend=True), Compute("seq-b", suspend=True)
    try:
        cluster = Cluster(a, b)
        assert len(cluster) == 2 and list(cluster) == [a, b] and cluster[1] is b and cluster[-1] is b
        first, second = cluster
        assert (first, second) == (a, b)
        assert cluster[0:1] == (a,)
        with pytest.raises(TypeError, match="argument 1 is str"):
            Cluster(a, "seq-b")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="seq-a given more than once"):
            Cluster(a, a)
    finally:
        from skytorch.client._sync import run_sync

        run_sync(Cluster(a, b).delete(grace_period_seconds=5))


async def test_tensor_calls_before_ready_raise_a_clear_error(local_client):
    import torch

    compute = Compute("not-yet", suspend=True)
    try:
        for call in (compute.send_tensors(torch.ones(2)), compute.receive_tensors(count=1),
                     compute.stream_tensors(torch.ones(2))):
            with pytest.raises(client.ComputeNotReadyError, match=r"not-yet.*ready\(\)"):
                await call
    finally:
        await compute.delete(grace_period_seconds=5)


def test_importing_the_client_imports_neither_ipython_nor_ipywidgets():
    code = ("import sys, skytorch.client; "
            "bad = [m for m in ('IPython', 'ipywidgets', 'ipykernel', 'kubernetes') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_names():
    for name in ("Compute", "Cluster", "init", "log_event", "current_backend", "ComputeError",
                 "ComputeTimeoutError", "ComputeNotReadyError", "KubernetesApiError", "SkyTorchError"):
        assert name in client.__all__ and hasattr(client, name)
    assert issubclass(client.ComputeTimeoutError, TimeoutError)


def test_keep_is_recorded_as_a_label(local_client):
    kept = Compute("kept-one", suspend=True, keep=True, labels={"team": "ml"})
    plain = Compute("plain-one", suspend=True)
    try:
        assert kept.keep is True and kept.resource.metadata.labels == {"team": "ml", "skytorch.dev/keep": "true"}
        assert plain.keep is False and "skytorch.dev/keep" not in plain.resource.metadata.labels
    finally:
        from skytorch.client._sync import run_sync

        run_sync(Cluster(kept, plain).delete(grace_period_seconds=5))
