"""The Kubernetes backend against the API emulator, through the real kubernetes_asyncio HTTP stack."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
import yaml
from kubernetes_asyncio import client as k8s

from skytorch.backends import kubernetes as kb
from skytorch.backends.kubernetes import KubernetesBackend, resolve_kubernetes
from skytorch.errors import BackendError, KubernetesApiError
from skytorch.resources import CLIENT_FIELD_MANAGER, ComputeSpec, apply_manifest, env_list
from tests.emulator import FakeOperator, KubeEmulator
from tests.upstream import upstream_crd, upstream_schema

G, V = "compute.skytorch.dev", "v1alpha1"


def manifest(name: str, namespace: str = "default", **spec) -> dict:
    spec.setdefault("image", "ghcr.io/skytorch/server:latest")
    return apply_manifest(name, namespace, ComputeSpec(**spec), labels={"team": "a"})


@pytest.fixture
async def backend(kubeconfig) -> KubernetesBackend:
    resolved = await resolve_kubernetes()
    assert resolved is not None
    yield resolved
    await resolved.close()


async def next_item(iterator, timeout: float = 10):
    return await asyncio.wait_for(iterator.__anext__(), timeout)


async def until_watching(emulator: KubeEmulator, count: int = 1) -> None:
    """Wait (a hang guard, not a timing) until ``count`` watches are open on the emulator."""
    async with asyncio.timeout(10):
        while emulator.open_watches() < count:
            await asyncio.sleep(0.01)


def set_ready(emulator: KubeEmulator, name: str, status: str) -> None:
    emulator.patch(f"{G}/{V}", "Compute", name, {"status": {"conditions": [
        {"type": "Ready", "status": status, "reason": "Test", "message": "set by the test",
         "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}, "default", subresource="status", manager="skytorch-operator")


# ------------------------------------------------------------------ apply


async def test_apply_is_one_server_side_apply_with_the_crd_shape(backend, kube_emulator: KubeEmulator):
    body = manifest("shape", env=env_list({"A": "1", "B": "two"}), command=["python"], args=["-m", "x"],
                    resources={"nvidia.com/gpu": "1", "memory": "8Gi"})
    resource = await backend.apply(body)
    assert resource.metadata.name == "shape" and resource.metadata.uid
    assert resource.spec.env == [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}]
    [request] = kube_emulator.requests_made()
    assert request.method == "PATCH"
    assert request.path == f"/apis/{G}/{V}/namespaces/default/computes/shape"
    assert request.content_type == "application/apply-patch+yaml"
    assert request.query["fieldManager"] == CLIENT_FIELD_MANAGER == "skytorch-python-client"
    assert request.query["force"].lower() == "true"
    sent = request.body
    assert sent["apiVersion"] == "compute.skytorch.dev/v1alpha1" and sent["kind"] == "Compute"
    assert sent["spec"]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}]
    assert sent["metadata"]["labels"] == {"team": "a"}


def test_apply_body_validates_against_the_upstream_crd():
    import jsonschema

    schema = upstream_schema()
    body = manifest("valid", env=env_list({"A": "1"}), command=["python"], args=["-m", "skytorch.server"],
                    labels={"pod": "label"}, annotations={"pod": "note"}, suspend=True,
                    resources={"nvidia.com/gpu": "1", "memory": "8Gi", "cpu": 4})
    jsonschema.Draft7Validator(schema).validate(body)
    assert set(body["spec"]) <= set(schema["properties"]["spec"]["properties"])
    assert len(body["spec"]) >= schema["properties"]["spec"]["minProperties"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate({**body, "spec": {}})


async def test_apply_against_the_upstream_crd_schema_in_the_emulator(backend, kube_api_client, kube_emulator):
    crd = upstream_crd()
    await k8s.ApiextensionsV1Api(kube_api_client).create_custom_resource_definition(crd)
    resource = await backend.apply(manifest("schema-checked", env=env_list({"K": "V"})))
    assert resource.metadata.uid
    pruned = manifest("schema-pruned")
    pruned["spec"]["bogus"] = "dropped"
    assert "bogus" not in (await backend.apply(pruned)).spec.to_dict() | (
        kube_emulator.get(f"{G}/{V}", "Compute", "schema-pruned", "default")["spec"]), "unknown fields are pruned"
    bad = manifest("schema-bad")
    bad["spec"]["env"] = [{"value": "no name"}]
    with pytest.raises(KubernetesApiError) as info:
        await backend.apply(bad)
    assert info.value.status == 422 and "schema-bad" in str(info.value) and "name" in str(info.value)


async def test_apply_twice_is_harmless(backend, kube_emulator: KubeEmulator):
    first = await backend.apply(manifest("twice"))
    second = await backend.apply(manifest("twice"))
    assert second.metadata.resource_version == first.metadata.resource_version
    assert second.metadata.generation == 1
    stored = kube_emulator.get(f"{G}/{V}", "Compute", "twice", "default")
    assert [e["manager"] for e in stored["metadata"]["managedFields"]] == ["skytorch-python-client"]
    changed = await backend.apply(manifest("twice", suspend=True))
    assert changed.spec.suspend is True and changed.metadata.generation == 2


async def test_apply_keeps_the_operators_status(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("keeps"))
    set_ready(kube_emulator, "keeps", "True")
    again = await backend.apply(manifest("keeps", suspend=True))
    assert again.is_ready and again.spec.suspend


async def test_get_list_delete(backend, kube_emulator: KubeEmulator):
    assert await backend.get("absent") is None
    await backend.apply(manifest("one"))
    await backend.apply(apply_manifest("two", "default", ComputeSpec(image="x"), labels={"team": "b"}))
    assert [r.metadata.name for r in await backend.list()] == ["one", "two"]
    assert [r.metadata.name for r in await backend.list("team=b")] == ["two"]
    got = await backend.get("one")
    assert got is not None and got.spec.image == "ghcr.io/skytorch/server:latest"
    kube_emulator.clear_requests()
    assert await backend.delete("one", grace_period_seconds=7) is True
    [request] = kube_emulator.requests_made("DELETE")
    assert request.query["gracePeriodSeconds"] == "7" and request.body["gracePeriodSeconds"] == 7
    assert await backend.get("one") is None
    assert await backend.delete("one") is False


def test_endpoint_is_the_operators_service():
    backend = KubernetesBackend(k8s.Configuration(), "team-a")
    assert backend.endpoint("trainer", 50051) == ("trainer.team-a.svc.cluster.local", 50051)


# ------------------------------------------------------------------ watch


async def test_watch_yields_absent_then_each_change_then_deletion(backend, kube_emulator: KubeEmulator):
    stream = backend.watch("w")
    try:
        assert await next_item(stream) is None
        await backend.apply(manifest("w"))
        created = await next_item(stream)
        assert created is not None and not created.is_ready
        set_ready(kube_emulator, "w", "True")
        ready = await next_item(stream)
        assert ready.is_ready and ready.condition("Ready").reason == "Test"
        await backend.delete("w", grace_period_seconds=0)
        assert await next_item(stream) is None
    finally:
        await stream.aclose()


async def test_watch_makes_a_constant_handful_of_requests(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("quiet"))
    kube_emulator.clear_requests()
    stream = backend.watch("quiet")
    try:
        await next_item(stream)
        for status in ("False", "True", "False", "True"):
            await asyncio.sleep(0.05)
            set_ready(kube_emulator, "quiet", status)
            assert (await next_item(stream)).is_ready == (status == "True")
    finally:
        await stream.aclose()
    requests = kube_emulator.requests_made()
    assert [(r.method, r.is_watch) for r in requests] == [("GET", False), ("GET", True)]
    assert requests[0].query["fieldSelector"] == requests[1].query["fieldSelector"] == "metadata.name=quiet"


async def test_watch_starts_from_the_fresh_reads_resource_version(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("fromrv"))
    stream = backend.watch("fromrv")
    try:
        first = await next_item(stream)
        second = asyncio.ensure_future(next_item(stream))
        while not kube_emulator.requests_made("GET", watch=True):
            await asyncio.sleep(0.01)
        [watching] = kube_emulator.requests_made("GET", watch=True)
        assert int(watching.query["resourceVersion"]) >= int(first.metadata.resource_version)
        assert watching.query["allowWatchBookmarks"].lower() == "true"
        set_ready(kube_emulator, "fromrv", "True")
        assert (await second).is_ready
    finally:
        await stream.aclose()


async def test_watch_resumes_after_410_without_missing_a_transition(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("gone"))
    stream = backend.watch("gone")
    try:
        assert not (await next_item(stream)).is_ready
        pending = asyncio.ensure_future(next_item(stream))
        await until_watching(kube_emulator)
        # While the connection is down the Compute becomes ready, and the history expires.
        kube_emulator.drop_watches()
        set_ready(kube_emulator, "gone", "True")
        kube_emulator.compact()
        assert (await pending).is_ready
        lists = kube_emulator.requests_made("GET", "/computes", watch=False)
        assert len(lists) == 2, "a 410 makes the backend read the Compute afresh"
    finally:
        await stream.aclose()


async def test_watch_rereads_after_a_410_response_to_the_watch_request(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("expired"))
    rule = kube_emulator.fail("GET", r"/computes$", 410, times=1, watch=True)
    stream = backend.watch("expired")
    try:
        assert not (await next_item(stream)).is_ready
        pending = asyncio.ensure_future(next_item(stream))
        await until_watching(kube_emulator)
        set_ready(kube_emulator, "expired", "True")
        assert (await pending).is_ready
    finally:
        await stream.aclose()
    assert rule.hits == 1
    assert len(kube_emulator.requests_made("GET", "/computes$", watch=False)) == 2, "the 410 made it read afresh"


async def test_a_500_on_the_watch_request_surfaces(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("broken-watch"))
    kube_emulator.fail("GET", r"/computes$", 500, watch=True)
    stream = backend.watch("broken-watch")
    try:
        assert (await next_item(stream)).metadata.name == "broken-watch"
        with pytest.raises(KubernetesApiError) as info:
            await next_item(stream)
    finally:
        await stream.aclose()
    assert info.value.status == 500 and "default/broken-watch" in str(info.value)


async def test_watch_resumes_after_a_dropped_connection(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("drop"))
    stream = backend.watch("drop")
    try:
        await next_item(stream)
        for status in ("True", "False", "True"):
            pending = asyncio.ensure_future(next_item(stream))
            await until_watching(kube_emulator)
            kube_emulator.drop_watches()
            set_ready(kube_emulator, "drop", status)
            assert (await pending).is_ready == (status == "True")
        assert len(kube_emulator.requests_made("GET", "/computes", watch=False)) == 1, \
            "a dropped connection resumes from the last resourceVersion, without a re-read"
        assert len(kube_emulator.requests_made("GET", "/computes", watch=True)) >= 4
    finally:
        await stream.aclose()


async def test_watch_renews_after_the_server_ends_it(kube_emulator: KubeEmulator, kubeconfig):
    backend = await resolve_kubernetes()
    backend.watch_timeout = 1
    await backend.apply(manifest("renew"))
    stream = backend.watch("renew")
    try:
        await next_item(stream)
        pending = asyncio.ensure_future(next_item(stream))
        while len(kube_emulator.requests_made("GET", watch=True)) < 2:
            await asyncio.sleep(0.05)
        set_ready(kube_emulator, "renew", "True")
        assert (await pending).is_ready
        assert len(kube_emulator.requests_made("GET", watch=False)) == 1
    finally:
        await stream.aclose()
        await backend.close()


async def test_watch_error_surfaces_as_an_api_error(backend, kube_emulator: KubeEmulator):
    kube_emulator.fail("GET", r"/computes$", 403)
    stream = backend.watch("denied")
    try:
        with pytest.raises(KubernetesApiError) as info:
            await next_item(stream)
    finally:
        await stream.aclose()
    assert info.value.status == 403 and "default/denied" in str(info.value) and "RBAC" in str(info.value)


async def test_watch_rides_out_an_api_asking_to_come_back_later(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("busy"))
    kube_emulator.fail("GET", r"/computes$", 503, times=2)
    stream = backend.watch("busy")
    try:
        assert (await next_item(stream)).metadata.name == "busy"
        pending = asyncio.ensure_future(next_item(stream))
        await until_watching(kube_emulator)
        set_ready(kube_emulator, "busy", "True")
        assert (await pending).is_ready
    finally:
        await stream.aclose()
    statuses = [r.status for r in kube_emulator.requests_made("GET", "/computes$")]
    assert statuses[:3] == [503, 503, 200]


async def test_missing_crd_says_so(backend, kube_emulator: KubeEmulator):
    with kube_emulator.store.lock:
        served = kube_emulator.store.types.pop((G, V, "computes"))
    try:
        with pytest.raises(KubernetesApiError) as info:
            await backend.apply(manifest("nocrd"))
        assert info.value.status == 404 and "CRD" in str(info.value) and "default/nocrd" in str(info.value)
    finally:
        kube_emulator.store.add_type(served)


# ------------------------------------------------------------------ events


async def test_events_existing_first_then_new_none_twice(backend, kube_emulator: KubeEmulator):
    await backend.apply(manifest("ev"))
    await backend.apply(manifest("other"))
    compute = kube_emulator.get(f"{G}/{V}", "Compute", "ev", "default")
    kube_emulator.emit_event(compute, "Created", "first")
    kube_emulator.emit_event(kube_emulator.get(f"{G}/{V}", "Compute", "other", "default"), "Created", "not ours")
    stream = backend.events("ev")
    try:
        first = await next_item(stream)
        assert isinstance(first, k8s.CoreV1Event)
        assert (first.reason, first.message, first.involved_object.name) == ("Created", "first", "ev")
        pending = asyncio.ensure_future(next_item(stream))
        await until_watching(kube_emulator)
        kube_emulator.emit_event(compute, "Started", "second")
        assert (await pending).message == "second"
        # A dropped connection and an expired history: the re-list must not repeat anything.
        pending = asyncio.ensure_future(next_item(stream))
        await until_watching(kube_emulator)
        kube_emulator.drop_watches()
        kube_emulator.emit_event(compute, "BackOff", "third", type="Warning")
        kube_emulator.compact()
        third = await pending
        assert (third.reason, third.type, third.message) == ("BackOff", "Warning", "third")
        kube_emulator.emit_event(compute, "Ready", "fourth")
        assert (await next_item(stream)).message == "fourth"
        with pytest.raises(asyncio.TimeoutError):
            await next_item(stream, timeout=0.5)
    finally:
        await stream.aclose()
    request = kube_emulator.requests_made("GET", "/events")[0]
    assert request.query["fieldSelector"] == \
        "involvedObject.kind=Compute,involvedObject.name=ev,involvedObject.namespace=default"


async def test_events_from_the_fake_operator(backend, kube_emulator: KubeEmulator):
    operator = FakeOperator(kube_emulator, ready_delay=0.05).start()
    try:
        stream = backend.events("op")
        try:
            await backend.apply(manifest("op"))
            reasons = [(await next_item(stream)).reason for _ in range(3)]
        finally:
            await stream.aclose()
    finally:
        operator.stop()
    assert reasons == ["Created", "Started", "Ready"]


# ------------------------------------------------------------------ errors


async def test_forbidden_apply_names_the_compute_and_the_rbac_rule(backend, kube_emulator: KubeEmulator):
    kube_emulator.fail("PATCH", r"/computes/secret$", 403)
    with pytest.raises(KubernetesApiError) as info:
        await backend.apply(manifest("secret"))
    error = info.value
    assert error.status == 403 and error.reason == "Forbidden" and error.compute == "default/secret"
    text = str(error)
    assert "RBAC" in text and '"patch"' in text and "computes.compute.skytorch.dev" in text and "default/secret" in text


async def test_server_error_names_the_compute(backend, kube_emulator: KubeEmulator):
    kube_emulator.fail("*", r"/computes/flaky$", 500)
    for call in (backend.apply(manifest("flaky")), backend.get("flaky"), backend.delete("flaky")):
        with pytest.raises(KubernetesApiError) as info:
            await call
        assert info.value.status == 500 and "default/flaky" in str(info.value) and "server-side" in str(info.value)


async def test_invalid_compute_gets_the_apis_message(backend):
    body = manifest("invalid")
    body["spec"] = {}
    with pytest.raises(KubernetesApiError) as info:
        await backend.apply(body)
    assert info.value.status == 422 and "at least 1 properties" in str(info.value) and "default/invalid" in str(info.value)


async def test_unreachable_api_is_a_clear_error():
    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    backend = KubernetesBackend(configuration, "default")
    try:
        with pytest.raises(KubernetesApiError) as info:
            await backend.get("nowhere")
        assert "could not be reached" in str(info.value) and "default/nowhere" in str(info.value)
    finally:
        await backend.close()


async def test_a_hanging_api_is_a_clear_error_not_a_hang(kube_emulator: KubeEmulator, kubeconfig):
    backend = await resolve_kubernetes()
    backend.request_timeout = 0.5
    kube_emulator.fail("GET", r"/computes/slow$", None, delay=5)
    try:
        with pytest.raises(KubernetesApiError) as info:
            await backend.get("slow")
        assert "default/slow" in str(info.value) and "did not answer within 0.5s" in str(info.value)
    finally:
        await backend.close()


async def test_bad_name_is_refused_before_any_request(backend, kube_emulator: KubeEmulator):
    body = manifest("ok")
    body["metadata"]["name"] = "Not_OK"
    with pytest.raises(ValueError, match="RFC 1035"):
        await backend.apply(body)
    assert kube_emulator.requests_made() == []


# ------------------------------------------------------------------ event loops


def test_backend_works_from_one_loop_after_another(kube_emulator: KubeEmulator, kubeconfig):
    backend = asyncio.run(resolve_kubernetes())

    async def use(name: str) -> str:
        try:
            return (await backend.apply(manifest(name))).metadata.name
        finally:
            await backend.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(use("loop-one")) == "loop-one"
        assert asyncio.run(use("loop-two")) == "loop-two"
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)]
    assert backend._clients == {}


# ------------------------------------------------------------------ configuration


async def test_resolve_from_kubeconfig_env(kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    path = kube_emulator.write_kubeconfig(tmp_path / "kc", namespace="team-a")
    monkeypatch.setenv("KUBECONFIG", str(path))
    backend = await resolve_kubernetes()
    try:
        assert backend.namespace == "team-a" and backend.configuration.host == kube_emulator.url
        await backend.apply(manifest("in-team", namespace="team-a"))
        assert kube_emulator.get(f"{G}/{V}", "Compute", "in-team", "team-a") is not None
    finally:
        await backend.close()
    explicit = await resolve_kubernetes(namespace="other")
    assert explicit.namespace == "other"


async def test_resolve_from_home_kube_config(kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    kube_emulator.write_kubeconfig(tmp_path / ".kube" / "config", namespace="from-home")
    backend = await resolve_kubernetes()
    assert backend is not None and backend.namespace == "from-home"
    assert backend.configuration.host == kube_emulator.url


async def test_resolve_from_a_kubeconfig_path_list(kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    real = kube_emulator.write_kubeconfig(tmp_path / "real", namespace="listed")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{real}")
    backend = await resolve_kubernetes()
    assert backend.namespace == "listed" and backend.configuration.host == kube_emulator.url
    monkeypatch.setenv("KUBECONFIG", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    kube_emulator.write_kubeconfig(tmp_path / "home" / ".kube" / "config", namespace="empty-means-default")
    assert (await resolve_kubernetes()).namespace == "empty-means-default"


async def test_resolve_without_namespace_in_context_defaults(kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    doc = kube_emulator.kubeconfig()
    del doc["contexts"][0]["context"]["namespace"]
    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kb, "SERVICE_ACCOUNT_DIR", str(tmp_path / "no-sa"))
    assert (await resolve_kubernetes()).namespace == "default"


async def test_resolve_in_cluster_service_account(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (sa / "namespace").write_text("from-sa\n")
    monkeypatch.setattr(kb, "SERVICE_ACCOUNT_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    backend = await resolve_kubernetes()
    assert backend.configuration.host == "https://10.0.0.1:443"
    assert backend.namespace == "from-sa"
    assert backend.configuration.api_key["BearerToken"] == "Bearer sa-token"
    assert (await resolve_kubernetes(namespace="mine")).namespace == "mine"


async def test_resolve_without_any_configuration_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setattr(kb, "SERVICE_ACCOUNT_DIR", str(tmp_path / "no-sa"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert await resolve_kubernetes() is None


async def test_broken_kubeconfig_is_a_backend_error(tmp_path, monkeypatch):
    path = tmp_path / "kc"
    path.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nope\ncontexts: []\nclusters: []\nusers: []\n")
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(BackendError, match=str(path)):
        await resolve_kubernetes()


async def test_explicit_async_configuration(kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setattr(kb, "SERVICE_ACCOUNT_DIR", str(tmp_path / "no-sa"))
    configuration = k8s.Configuration()
    configuration.host = kube_emulator.url
    configuration.api_key = {"BearerToken": f"Bearer {kube_emulator.token}"}
    backend = await resolve_kubernetes(configuration, namespace="given")
    try:
        assert backend.configuration is configuration and backend.namespace == "given"
        assert (await backend.apply(manifest("explicit", namespace="given"))).metadata.namespace == "given"
    finally:
        await backend.close()


async def test_explicit_sync_kubernetes_configuration_is_copied(kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    kubernetes = pytest.importorskip("kubernetes")
    path = kube_emulator.write_kubeconfig(tmp_path / "kc", namespace="sync-ns")
    sync_config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=sync_config)
    monkeypatch.setenv("KUBECONFIG", str(path))
    backend = await resolve_kubernetes(sync_config)
    try:
        assert isinstance(backend.configuration, k8s.Configuration)
        assert backend.configuration.host == kube_emulator.url and backend.namespace == "sync-ns"
        assert (await backend.apply(manifest("via-sync", namespace="sync-ns"))).metadata.uid
    finally:
        await backend.close()
    legacy = kubernetes.client.Configuration(host=kube_emulator.url)
    legacy.api_key = {"authorization": f"Bearer {kube_emulator.token}"}
    copied = kb.as_async_configuration(legacy)
    assert copied.api_key == {"BearerToken": f"Bearer {kube_emulator.token}"}


def test_unknown_client_config_is_refused():
    with pytest.raises(BackendError, match="Configuration"):
        kb.as_async_configuration(object())
