"""API failures through the public client: RBAC 403 and server 500 name the Compute, every later call re-raises."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from skytorch.client import Compute, KubernetesApiError, current_backend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def on_emulator(client_env, kube_emulator, tmp_path: pathlib.Path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.write_kubeconfig(tmp_path / "kubeconfig", "team-x")))
    return kube_emulator


@pytest.mark.parametrize("status, words", [(403, ["RBAC", "patch"]), (500, ["500"])])
async def test_a_refused_apply_names_the_compute_and_is_reraised_by_later_calls(on_emulator, status, words):
    on_emulator.fail("PATCH", "/computes/refused$", status)
    compute = Compute("refused", image="example/skytorch:1")
    assert compute.state == "Applying"
    try:
        with pytest.raises(KubernetesApiError) as info:
            await compute.ready(timeout=10)
        assert info.value.status == status and "team-x/refused" in str(info.value)
        for word in words:
            assert word.lower() in str(info.value).lower()
        assert compute.state == "Failed"
        with pytest.raises(KubernetesApiError, match="team-x/refused"):
            await compute.suspend()
        with pytest.raises(KubernetesApiError, match="team-x/refused"):
            await asyncio.to_thread(compute.is_ready)  # (not on this loop: nest_asyncio would patch the session)
    finally:
        await (await current_backend()).close()


def test_outside_a_loop_a_refused_apply_raises_from_the_constructor(on_emulator):
    on_emulator.fail("PATCH", "/computes/refused-sync$", 403)
    with pytest.raises(KubernetesApiError, match="team-x/refused-sync") as info:
        Compute("refused-sync", image="example/skytorch:1")
    assert info.value.status == 403


async def test_a_failing_delete_names_the_compute(on_emulator, fake_operator):
    compute = Compute("undeletable", image="example/skytorch:1", host="127.0.0.1")
    try:
        await compute.ready(timeout=10)
        on_emulator.fail("DELETE", "/computes/undeletable$", 500, times=1)
        with pytest.raises(KubernetesApiError, match="team-x/undeletable") as info:
            await compute.delete(grace_period_seconds=0)
        assert info.value.status == 500 and compute.state != "Deleted"
        await compute.delete(grace_period_seconds=0)  # the API recovered: a retry works
        assert compute.state == "Deleted"
    finally:
        await (await current_backend()).close()
