"""Configuration: init() and auto-initialisation choose the backend and namespace as the seed says."""

from __future__ import annotations

import logging
import pathlib

import pytest

from skytorch.backends.kubernetes import KubernetesBackend
from skytorch.backends.local import LocalBackend
from skytorch.client import BackendError, Compute, current_backend, init
from skytorch.client import _config

pytestmark = pytest.mark.timeout(120)


def use_kubeconfig(emulator, tmp_path: pathlib.Path, monkeypatch, namespace: str = "team-a") -> pathlib.Path:
    path = emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


async def test_no_configuration_at_all_falls_back_to_local_and_says_so_once(client_env, caplog):
    caplog.set_level(logging.INFO, logger="skytorch.client._config")
    a = Compute("first", suspend=True)
    b = Compute("second", suspend=True)
    try:
        await a.suspend()
        await b.suspend()
        backend = await current_backend()
        assert isinstance(backend, LocalBackend) and backend.namespace == "default"
        assert a.backend_kind == b.backend_kind == "local"
        lines = [r for r in caplog.records if "No Kubernetes configuration found" in r.getMessage()]
        assert len(lines) == 1 and "local server processes" in lines[0].getMessage()
    finally:
        await a.delete()
        await b.delete()


async def test_kubeconfig_is_used_with_its_context_namespace(client_env, kube_emulator, fake_operator,
                                                              tmp_path, monkeypatch):
    use_kubeconfig(kube_emulator, tmp_path, monkeypatch, namespace="team-a")
    compute = Compute("from-kubeconfig", image="example/skytorch:1", host="127.0.0.1")
    try:
        await compute.ready(timeout=30)
        assert compute.backend_kind == "kubernetes" and compute.namespace == "team-a"
        (apply,) = kube_emulator.requests_made("PATCH")
        assert apply.path == "/apis/compute.skytorch.dev/v1alpha1/namespaces/team-a/computes/from-kubeconfig"
    finally:
        await compute.delete(grace_period_seconds=0)
        await (await current_backend()).close()


async def test_init_namespace_overrides_the_context(client_env, kube_emulator, fake_operator, tmp_path, monkeypatch):
    use_kubeconfig(kube_emulator, tmp_path, monkeypatch, namespace="team-a")
    init(namespace="team-b")
    compute = Compute("explicit-ns", suspend=True)
    try:
        await compute.suspend()
        assert compute.namespace == "team-b"
        assert kube_emulator.requests_made("PATCH")[0].path.endswith("/namespaces/team-b/computes/explicit-ns")
    finally:
        await compute.delete(grace_period_seconds=0)
        await (await current_backend()).close()


async def test_skytorch_backend_local_wins_over_a_kubeconfig(client_env, kube_emulator, tmp_path, monkeypatch):
    use_kubeconfig(kube_emulator, tmp_path, monkeypatch)
    monkeypatch.setenv("SKYTORCH_BACKEND", "local")
    compute = Compute("forced-local", suspend=True)
    try:
        await compute.suspend()
        assert compute.backend_kind == "local"
        assert kube_emulator.requests_made() == []
    finally:
        await compute.delete()


async def test_skytorch_backend_kubernetes_without_configuration_is_a_clear_error(client_env, monkeypatch):
    monkeypatch.setenv("SKYTORCH_BACKEND", "kubernetes")
    compute = Compute("nowhere")
    with pytest.raises(BackendError, match="no Kubernetes configuration was found"):
        await compute.ready(timeout=5)
    assert compute.state == "Failed"


def test_outside_a_loop_the_configuration_error_comes_from_the_constructor(client_env, monkeypatch):
    monkeypatch.setenv("SKYTORCH_BACKEND", "kubernetes")
    with pytest.raises(BackendError, match="SKYTORCH_BACKEND=kubernetes"):
        Compute("nowhere-sync")


async def test_init_with_a_kubernetes_asyncio_configuration(client_env, kube_emulator, fake_operator):
    from kubernetes_asyncio import client as k8s

    configuration = k8s.Configuration()
    configuration.host = kube_emulator.url
    configuration.api_key = {"BearerToken": f"Bearer {kube_emulator.token}"}
    init(client_config=configuration, namespace="async-cfg")
    compute = Compute("async-config", host="127.0.0.1")
    try:
        await compute.ready(timeout=30)
        assert compute.backend_kind == "kubernetes" and compute.namespace == "async-cfg"
    finally:
        await compute.delete(grace_period_seconds=0)
        await (await current_backend()).close()


async def test_init_with_the_sync_kubernetes_configuration_of_the_seed(client_env, kube_emulator, fake_operator):
    """The seed's example builds ``kubernetes.client.Configuration`` with a bearer token: it is honoured."""
    kubernetes = pytest.importorskip("kubernetes")

    config = kubernetes.client.Configuration()
    config.host = kube_emulator.url
    config.api_key_prefix["authorization"] = "Bearer"
    config.api_key["authorization"] = kube_emulator.token  # the emulator rejects requests without it
    init(client_config=config)
    compute = Compute("sync-config", host="127.0.0.1")
    try:
        await compute.ready(timeout=30)
        assert compute.namespace == "default" and compute.backend_kind == "kubernetes"
        (apply,) = kube_emulator.requests_made("PATCH")
        assert apply.path.endswith("/namespaces/default/computes/sync-config")
    finally:
        await compute.delete(grace_period_seconds=0)
        await (await current_backend()).close()


def test_an_unknown_backend_name_is_rejected(client_env, monkeypatch):
    monkeypatch.setenv("SKYTORCH_BACKEND", "cloud")
    with pytest.raises(BackendError, match="'cloud' is not a backend"):
        Compute("unknown-backend")


def test_reset_for_tests_allows_a_new_init(client_env):
    init(namespace="one")
    _config._reset_for_tests()
    init(namespace="two")
    assert _config.configured_namespace() == "two"


async def test_wrong_credentials_surface_as_a_clear_error_naming_the_compute(client_env, kube_emulator):
    kubernetes = pytest.importorskip("kubernetes")
    from skytorch.client import KubernetesApiError

    config = kubernetes.client.Configuration()
    config.host = kube_emulator.url
    config.api_key_prefix["authorization"] = "Bearer"
    config.api_key["authorization"] = "not-the-token"
    init(client_config=config, namespace="ns1")
    compute = Compute("badauth")
    try:
        with pytest.raises(KubernetesApiError, match="ns1/badauth") as info:
            await compute.ready(timeout=10)
        assert info.value.status == 401 and compute.state == "Failed"
    finally:
        await (await current_backend()).close()
