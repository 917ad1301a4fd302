"""The seed's client behaviours on Kubernetes: the public API against the API emulator and a fake operator.

Every Compute here is applied through the real kubernetes_asyncio HTTP stack to
the emulator; the fake operator flips its conditions like the real one. Tensor
calls go to a real ``python -m skytorch.server`` reached through the
``host``/``port`` override, as with a port-forward.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from skytorch.client import (
    Cluster,
    Compute,
    ComputeNotReadyError,
    ComputeTimeoutError,
    current_backend,
    init,
    log_event,
)
from tests.emulator import FakeOperator, KubeEmulator
from tests.upstream import upstream_crd, upstream_schema

pytestmark = pytest.mark.timeout(120)

G, V = "compute.skytorch.dev", "v1alpha1"
IMAGE = "ghcr.io/skytorch/server:test"


@pytest.fixture
async def on_kube(client_env, kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    """The client configured from a kubeconfig pointing at the emulator (namespace ``default``)."""
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.write_kubeconfig(tmp_path / "kubeconfig", "default")))
    yield kube_emulator
    from skytorch.client import _config

    backend = _config.resolved_backend()
    if backend is not None:
        await backend.close()


@pytest.fixture
def operator(kube_emulator: KubeEmulator):
    """A fake operator that waits for the test to say when a Compute is ready."""
    op = FakeOperator(kube_emulator, ready_delay=None).start()
    yield op
    op.stop()


@pytest.fixture
def server(server_process):
    """A real tensor server on 127.0.0.1 that every Compute of a test reaches through host/port."""
    return server_process()


def stored(emulator: KubeEmulator, name: str) -> dict | None:
    return emulator.get(f"{G}/{V}", "Compute", name, "default")


def compute_requests(emulator: KubeEmulator, name: str, method: str | None = None):
    """Requests about the Compute itself (not its Events)."""
    return [r for r in emulator.requests_made(method)
            if r.path.endswith(f"/computes/{name}") or (r.path.endswith("/computes")
                                                          and r.query.get("fieldSelector") == f"metadata.name={name}")]


async def until(predicate, what: str, timeout: float = 20) -> None:
    """Wait (a hang guard) until ``predicate()`` holds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# ------------------------------------------------------------------ construct = server-side apply


def test_constructing_outside_a_loop_applies_with_server_side_apply(on_kube):
    compute = Compute("ssa", image=IMAGE, command=["python", "-m", "skytorch.server"], args=["--log-level", "DEBUG"],
                      env={"LOG_LEVEL": "DEBUG", "CHUNK_SIZE": "2097152"}, labels={"team": "ml"},
                      annotations={"note": "x"}, resources={"nvidia.com/gpu": "1", "memory": "8Gi"})
    [patch] = on_kube.requests_made("PATCH")  # done before the constructor returned
    assert patch.path == f"/apis/{G}/{V}/namespaces/default/computes/ssa"
    assert patch.content_type == "application/apply-patch+yaml"
    assert patch.query["fieldManager"] == "skytorch-python-client" and patch.query["force"].lower() == "true"
    body = patch.body
    assert body["apiVersion"] == "compute.skytorch.dev/v1alpha1" and body["kind"] == "Compute"
    assert body["spec"]["env"] == [{"name": "LOG_LEVEL", "value": "DEBUG"}, {"name": "CHUNK_SIZE", "value": "2097152"}]
    assert body["spec"]["resources"] == {"nvidia.com/gpu": "1", "memory": "8Gi"}
    assert body["metadata"]["labels"]["team"] == "ml" and body["metadata"]["annotations"] == {"note": "x"}
    import jsonschema

    jsonschema.Draft7Validator(upstream_schema()).validate(body)
    resource = compute.resource
    assert resource is not None and resource.metadata.uid == stored(on_kube, "ssa")["metadata"]["uid"]
    first_rv = stored(on_kube, "ssa")["metadata"]["resourceVersion"]

    again = Compute("ssa", image=IMAGE, command=["python", "-m", "skytorch.server"], args=["--log-level", "DEBUG"],
                    env={"LOG_LEVEL": "DEBUG", "CHUNK_SIZE": "2097152"}, labels={"team": "ml"},
                    annotations={"note": "x"}, resources={"nvidia.com/gpu": "1", "memory": "8Gi"})
    assert again.resource.metadata.resource_version == first_rv, "applying the same Compute twice is harmless"
    assert stored(on_kube, "ssa")["metadata"]["generation"] == 1
    Compute("ssa", image=IMAGE + "-v2")
    assert stored(on_kube, "ssa")["spec"]["image"] == IMAGE + "-v2", "the same name updates the Compute"
    assert "env" not in stored(on_kube, "ssa")["spec"], "fields the client no longer sets are dropped by the apply"
    before = len(on_kube.requests_made("GET", "/computes/ssa$"))
    assert compute.is_ready() is False, "no operator has made it ready"
    assert len(on_kube.requests_made("GET", "/computes/ssa$")) == before + 1, "is_ready() fetches the current status"
    on_kube.patch(f"{G}/{V}", "Compute", "ssa", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "Test", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}},
        "default", subresource="status", manager="skytorch-operator")
    assert compute.is_ready() is True


async def test_constructing_inside_a_loop_does_not_block(on_kube, operator):
    compute = Compute("nonblocking", image=IMAGE, host="127.0.0.1")
    assert on_kube.requests_made("PATCH") == [], "the apply runs as a task, after the constructor returned"
    assert compute.state == "Applying"
    await until(lambda: stored(on_kube, "nonblocking") is not None, "the apply")
    await compute.delete(grace_period_seconds=0)


async def test_namespace_from_init(client_env, kube_emulator: KubeEmulator, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.write_kubeconfig(tmp_path / "kc", "from-context")))
    init(namespace="from-init")
    try:
        compute = Compute("placed", image=IMAGE)
        await until(lambda: kube_emulator.get(f"{G}/{V}", "Compute", "placed", "from-init") is not None, "the apply")
        assert compute.namespace == "from-init"
        with pytest.raises(RuntimeError):
            init(namespace="too-late")
        await compute.delete(grace_period_seconds=0)
    finally:
        await (await current_backend()).close()


# ------------------------------------------------------------------ ready, async with, tensors


async def test_async_with_is_ready_then_deleted_with_the_grace_period(on_kube, operator, server):
    async def flip() -> None:
        await until(lambda: stored(on_kube, "ctx") is not None, "the apply")
        operator.set_ready("ctx")

    flipper = asyncio.ensure_future(flip())
    async with Compute("ctx", image=IMAGE, host="127.0.0.1", port=server.port) as compute:
        await flipper
        assert await asyncio.to_thread(compute.is_ready), "the sync is_ready() sees it ready"
        assert compute.resource.condition("Ready").status == "True"
        assert [c.type for c in compute.resource.status.conditions] == ["Ready", "Suspended"]
        tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        response = await compute.send_tensors(tensor)
        assert response.success
        [echoed] = await compute.stream_tensors(tensor)
        assert torch.equal(echoed, tensor)
        [received] = await compute.receive_tensors(count=1, parameters={"shape": "2,3"})
        assert tuple(received.shape) == (2, 3)
    [delete] = on_kube.requests_made("DELETE")
    assert delete.path.endswith("/computes/ctx") and delete.query["gracePeriodSeconds"] == "30"
    assert stored(on_kube, "ctx") is None
    with pytest.raises(ComputeNotReadyError):
        await compute.send_tensors(tensor)


@pytest.mark.parametrize("how", ["raises", "cancelled"])
async def test_async_with_deletes_when_the_body_fails(on_kube, fake_operator, how):
    async def body() -> None:
        async with Compute(f"body-{how}", image=IMAGE, host="127.0.0.1"):
            if how == "raises":
                raise KeyError("boom")
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(body())
    if how == "raises":
        with pytest.raises(KeyError):
            await task
    else:
        await until(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in
                                ((stored(on_kube, "body-cancelled") or {}).get("status") or {}).get("conditions", [])),
                    "the Compute to be ready")
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert stored(on_kube, f"body-{how}") is None
    assert len(on_kube.requests_made("DELETE", f"/computes/body-{how}$")) == 1


async def test_ready_is_a_watch_with_a_constant_handful_of_requests(on_kube, operator):
    compute = Compute("patient", image=IMAGE, host="127.0.0.1")
    waiting = asyncio.ensure_future(compute.ready(timeout=60))
    await until(lambda: on_kube.open_watches() >= 2, "the status and event watches")
    for i in range(10):  # a long wait with many changes costs no extra requests
        operator.set_not_ready("patient", message=f"still pulling the image ({i})")
        await asyncio.sleep(0.02)
    assert not waiting.done()
    operator.set_ready("patient")
    assert await asyncio.wait_for(waiting, 20) is compute
    requests = compute_requests(on_kube, "patient")
    kinds = [(r.method, r.is_watch) for r in requests]
    assert kinds == [("PATCH", False), ("GET", False), ("GET", True)], kinds
    read, watch = requests[1], requests[2]
    assert watch.query["fieldSelector"] == "metadata.name=patient"
    assert int(watch.query["resourceVersion"]) >= int(requests and 1)
    assert read.status == 200
    await compute.delete(grace_period_seconds=0)


async def test_ready_survives_an_expired_watch_and_a_dropped_connection(on_kube, operator):
    compute = Compute("resilient", image=IMAGE, host="127.0.0.1")
    waiting = asyncio.ensure_future(compute.ready(timeout=60))
    await until(lambda: on_kube.open_watches() >= 2, "the watches")
    on_kube.drop_watches()
    operator.set_ready("resilient")  # happens while the client is disconnected...
    on_kube.compact()  # ...and the history that would replay it is gone: 410, re-read
    assert await asyncio.wait_for(waiting, 20) is compute
    await compute.delete(grace_period_seconds=0)


async def test_ready_timeout_names_the_compute_and_its_conditions(on_kube, operator):
    operator.fail("stuck", message="Back-off pulling image ghcr.io/skytorch/server:test")
    compute = Compute("stuck", image=IMAGE, host="127.0.0.1")
    with pytest.raises(ComputeTimeoutError) as info:
        await compute.ready(timeout=1)
    assert isinstance(info.value, TimeoutError)
    text = str(info.value)
    assert "default/stuck" in text and "Ready=False" in text and "CrashLoopBackOff" in text and "Back-off" in text
    await compute.delete(grace_period_seconds=0)


async def test_ready_timeout_without_an_operator(on_kube):
    compute = Compute("orphan", image=IMAGE, host="127.0.0.1")
    with pytest.raises(ComputeTimeoutError, match="default/orphan.*no conditions reported yet"):
        await compute.ready(timeout=0.5)
    await compute.delete(grace_period_seconds=0)


async def test_tensor_calls_before_ready_raise_a_clear_error(on_kube):
    compute = Compute("early", image=IMAGE, host="127.0.0.1")
    for call in (compute.send_tensors(torch.zeros(2)), compute.receive_tensors(count=1),
                 compute.stream_tensors(torch.zeros(2))):
        with pytest.raises(ComputeNotReadyError, match=r"early.*ready"):
            await call
    await compute.delete(grace_period_seconds=0)


# ------------------------------------------------------------------ suspend, resume, delete


async def test_suspend_and_resume(on_kube, operator, server):
    compute = Compute("sleeper", image=IMAGE, host="127.0.0.1", port=server.port)
    waiting = asyncio.ensure_future(compute.ready(timeout=30))
    await until(lambda: stored(on_kube, "sleeper") is not None, "the apply")
    operator.set_ready("sleeper")
    await waiting
    assert (await compute.send_tensors(torch.ones(3))).success

    await compute.suspend()
    patch = on_kube.requests_made("PATCH", "/computes/sleeper$")[-1]
    assert patch.body["spec"]["suspend"] is True and patch.content_type == "application/apply-patch+yaml"
    with pytest.raises(ComputeNotReadyError):
        await compute.send_tensors(torch.ones(3))
    await until(lambda: compute.state == "Suspended", "the Suspended condition")
    assert compute.resource.condition("Suspended").status == "True"
    assert not await asyncio.to_thread(compute.is_ready)

    resuming = asyncio.ensure_future(compute.resume(timeout=30))
    await until(lambda: stored(on_kube, "sleeper")["spec"]["suspend"] is False, "the resume apply")
    await until(lambda: stored(on_kube, "sleeper")["status"]["conditions"][0]["reason"] == "StatefulSetNotReady",
                "the operator to restart it")
    operator.set_ready("sleeper")
    assert await asyncio.wait_for(resuming, 20) is compute
    assert (await compute.send_tensors(torch.ones(3))).success
    await compute.delete(grace_period_seconds=0)


async def test_delete_of_a_vanished_compute_is_a_warning(on_kube, caplog):
    compute = Compute("vanished", image=IMAGE, host="127.0.0.1")
    await until(lambda: stored(on_kube, "vanished") is not None, "the apply")
    on_kube.delete(f"{G}/{V}", "Compute", "vanished", "default")
    with caplog.at_level(logging.WARNING):
        await compute.delete(grace_period_seconds=5)
    assert any(r.levelno == logging.WARNING and "vanished" in r.getMessage() for r in caplog.records)
    [delete] = on_kube.requests_made("DELETE")
    assert delete.status == 404 and delete.query["gracePeriodSeconds"] == "5"


# ------------------------------------------------------------------ events


async def test_on_events_gets_every_event_once_sync_and_async(on_kube, operator):
    seen_sync: list = []
    seen_async: list = []

    async def async_callback(event) -> None:
        await asyncio.sleep(0)
        seen_async.append(event)

    watched = Compute("evented", image=IMAGE, host="127.0.0.1", on_events=seen_sync.append)
    also = Compute("evented-async", image=IMAGE, host="127.0.0.1", on_events=async_callback)
    await until(lambda: len(seen_sync) >= 1 and len(seen_async) >= 1, "the Created events")
    on_kube.drop_watches()  # restarts must not repeat anything
    on_kube.compact()
    operator.set_ready("evented")
    operator.set_ready("evented-async")
    await until(lambda: len(seen_sync) >= 3 and len(seen_async) >= 3, "Started and Ready")
    await asyncio.sleep(0.3)
    from kubernetes_asyncio.client import CoreV1Event

    for events, name in ((seen_sync, "evented"), (seen_async, "evented-async")):
        assert [e.reason for e in events] == ["Created", "Started", "Ready"]
        assert all(isinstance(e, CoreV1Event) and e.involved_object.name == name for e in events)
        assert all(e.involved_object.kind == "Compute" and e.involved_object.namespace == "default" for e in events)
    for compute in (watched, also):
        await compute.delete(grace_period_seconds=0)


async def test_a_raising_callback_is_logged_and_the_stream_goes_on(on_kube, operator, caplog):
    calls: list = []

    def fragile(event) -> None:
        calls.append(event.reason)
        raise RuntimeError("callback bug")

    compute = Compute("fragile", image=IMAGE, host="127.0.0.1", on_events=fragile)
    await until(lambda: calls == ["Created"], "the first event")
    operator.set_ready("fragile")
    await until(lambda: calls == ["Created", "Started", "Ready"], "the later events")
    assert any("callback bug" in (r.exc_text or "") or "callback bug" in str(r.exc_info) for r in caplog.records)
    await compute.delete(grace_period_seconds=0)


async def test_log_event_logs_real_events_at_their_levels(on_kube, operator, caplog):
    caplog.set_level(logging.INFO, logger="skytorch.client.events")
    compute = Compute("logged", image=IMAGE, host="127.0.0.1", on_events=log_event)
    await until(lambda: any("Created" in r.getMessage() for r in caplog.records), "the Created event")
    operator.fail("logged", reason="BackOff", message="Back-off restarting failed container")
    await until(lambda: any("BackOff" in r.getMessage() for r in caplog.records), "the Warning event")
    records = {r.getMessage().split(": ")[1].split(" ")[1]: r for r in caplog.records if "logged" in r.getMessage()}
    assert records["Created"].levelno == logging.INFO and "default/logged" in records["Created"].getMessage()
    assert records["BackOff"].levelno == logging.WARNING
    assert "Back-off restarting failed container" in records["BackOff"].getMessage()
    await compute.delete(grace_period_seconds=0)


def test_sync_calls_inside_a_running_loop_on_kubernetes(on_kube, fake_operator, server, repo_env):
    """As in a notebook cell: sync is_ready() while the loop runs, on the Kubernetes backend.

    In a child process, because nest_asyncio (which makes this work on the
    caller's own loop) patches asyncio for the whole process it runs in.
    """
    code = textwrap.dedent(f"""
        import asyncio
        from skytorch.client import Cluster, Compute

        async def main():
            compute = Compute("nested-kube", image="{IMAGE}", host="127.0.0.1", port={server.port})
            await compute.ready(timeout=60)
            assert compute.is_ready() is True                   # a GET, on this very loop
            assert Cluster(compute).is_ready() is True
            await compute.suspend()
            assert compute.is_ready() is False
            await compute.delete(grace_period_seconds=5)
            print("OK")

        asyncio.run(main())
    """)
    env = {**repo_env, "SKYTORCH_BACKEND": "kubernetes", "KUBECONFIG": os.environ["KUBECONFIG"]}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr[-3000:]
    assert len(on_kube.requests_made("GET", "/computes/nested-kube$")) >= 3, "each is_ready() read the resource"
    assert on_kube.requests_made("DELETE", "/computes/nested-kube$")


# ------------------------------------------------------------------ Cluster


async def test_cluster_ready_in_parallel_tensors_to_all_then_all_deleted(on_kube, fake_operator, server):
    names = ("member-1", "member-2", "member-3")
    cluster = Cluster(*(Compute(n, image=IMAGE, host="127.0.0.1", port=server.port) for n in names))
    assert len(cluster) == 3 and [c.name for c in cluster] == list(names) and cluster[1].name == "member-2"
    async with cluster as (first, second, third):
        assert await asyncio.to_thread(cluster.is_ready)
        tensor = torch.randn(16, 16)
        responses = await asyncio.gather(*(c.send_tensors(tensor) for c in (first, second, third)))
        assert all(r.success for r in responses)
        results = await asyncio.gather(*(c.stream_tensors(tensor) for c in (first, second, third)))
        assert all(torch.equal(r[0], tensor) for r in results)
    assert sorted(r.path.rsplit("/", 1)[1] for r in on_kube.requests_made("DELETE")) == list(names)
    assert all(stored(on_kube, n) is None for n in names)


async def test_cluster_failures_come_as_one_exception_group(on_kube, operator):
    operator.fail("bad-1")
    operator.fail("bad-2")
    computes = [Compute(n, image=IMAGE, host="127.0.0.1") for n in ("good", "bad-1", "bad-2")]
    ready_soon = asyncio.ensure_future(until(lambda: stored(on_kube, "good") is not None, "the apply"))
    await ready_soon
    operator.set_ready("good")
    with pytest.raises(ExceptionGroup) as info:
        await Cluster(*computes).ready(timeout=1)
    assert len(info.value.exceptions) == 2
    assert all(isinstance(e, ComputeTimeoutError) for e in info.value.exceptions)
    assert sorted(e.compute for e in info.value.exceptions) == ["default/bad-1", "default/bad-2"]
    await Cluster(*computes).delete(grace_period_seconds=0)


@pytest.mark.parametrize("failure", ["apply refused", "still not ready when cancelled"])
async def test_cluster_deletes_every_compute_when_one_fails_to_become_ready(on_kube, fake_operator, failure):
    if failure == "apply refused":
        on_kube.fail("PATCH", "/computes/broken$", 403)
    else:
        fake_operator.fail("broken")
    computes = [Compute(n, image=IMAGE, host="127.0.0.1") for n in ("fine-1", "broken", "fine-2")]
    with pytest.raises(Exception) as info:
        async with asyncio.timeout(3):
            async with Cluster(*computes) as members:
                raise AssertionError(f"entered with {members}")
    assert not isinstance(info.value, AssertionError)
    assert sorted(r.path.rsplit("/", 1)[1] for r in on_kube.requests_made("DELETE")) == ["broken", "fine-1", "fine-2"]
    assert all(stored(on_kube, c.name) is None for c in computes)


async def test_full_lifecycle_against_the_upstream_crd(on_kube, fake_operator, server):
    """With the upstream CRD installed, every write of the client (and the operator's status) passes its schema."""
    on_kube.create(upstream_crd())
    assert on_kube.store.find_type(G, V, "computes").schema is not None, "the emulator now validates with it"
    compute = Compute("upstream", image=IMAGE, host="127.0.0.1", port=server.port, env={"A": "1"},
                      labels={"team": "ml"}, annotations={"a": "b"}, command=["python"], args=["-m", "skytorch.server"],
                      resources={"nvidia.com/gpu": "1", "memory": "8Gi", "cpu": 2})
    async with compute:
        assert (await compute.send_tensors(torch.ones(2))).success
        await compute.suspend()
        await compute.resume(timeout=30)
        assert await asyncio.to_thread(compute.is_ready)
    statuses = [r.status for r in on_kube.requests_made() if "/computes" in r.path]
    assert statuses and all(s < 400 for s in statuses), statuses
    sent = on_kube.requests_made("PATCH", "/computes/upstream$")[0].body
    assert sent["spec"]["resources"] == {"nvidia.com/gpu": "1", "memory": "8Gi", "cpu": 2}
