"""Computes live and die with the real kernel that made them.

- local backend: after a kernel shutdown no server process of it is left;
- Kubernetes (the API emulator, reached from the kernel through a kubeconfig):
  a shutdown or a restart sends the DELETEs before the kernel exits, kept
  Computes stay; after a SIGKILLed kernel, ``%skytorch gc`` from a new kernel
  deletes what it left behind (and nothing else).
"""

from __future__ import annotations

import ast
import time

import psutil
import pytest

from skytorch.resources import API_VERSION, KIND

pytestmark = pytest.mark.timeout(300)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def test_kernel_shutdown_leaves_no_local_server(kernel_factory):
    kernel = kernel_factory()
    kernel.execute(
        "from skytorch.client import Compute, current_backend\n"
        "a = Compute('nbk-local-a')\nb = Compute('nbk-local-b')\n"
        "await a.ready(timeout=120)\nawait b.ready(timeout=120)\n"
        "pids = (await current_backend()).pids()"
    )
    pids = ast.literal_eval(kernel.execute("pids").value())
    assert set(pids) == {"nbk-local-a", "nbk-local-b"}
    assert all(_alive(pid) for pid in pids.values())
    kernel.shutdown()
    assert not _alive(kernel.pid)
    assert _wait_gone(list(pids.values())) == []


def _computes(emulator) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in emulator.list(API_VERSION, KIND, "default")}


def _deletes(emulator, name: str) -> list:
    return emulator.requests_made("DELETE", rf"/computes/{name}$")


@pytest.fixture
def kube_kernel_env(kubeconfig):
    """Kernel environment that makes the kernel's Computes live in the emulator."""
    return {"KUBECONFIG": str(kubeconfig), "SKYTORCH_BACKEND": "kubernetes"}


def test_kernel_shutdown_deletes_its_computes_on_kubernetes_but_not_kept_ones(
        kube_emulator, fake_operator, kube_kernel_env, kernel_factory):
    kernel = kernel_factory(**kube_kernel_env)
    kernel.execute(
        "%load_ext skytorch\n"
        "from skytorch.client import Compute\n"
        "one = Compute('nbk-one', image='example/skytorch:test')\n"
        "kept = Compute('nbk-kept', image='example/skytorch:test', keep=True)\n"
        "await one.ready(timeout=60)\nawait kept.ready(timeout=60)"
    )
    kernel.execute("%skytorch up nbk-two --image example/skytorch:test --wait")
    stored = _computes(kube_emulator)
    assert {"nbk-one", "nbk-two", "nbk-kept"} <= set(stored)
    labels = stored["nbk-one"]["metadata"]["labels"]
    # the kernel's id (label values cannot end in '_', which a temporary connection file name may)
    assert labels["skytorch.dev/kernel"] == kernel.kernel_id.strip("-_.")
    assert labels["skytorch.dev/kernel-pid"] == str(kernel.pid)
    assert "skytorch.dev/host" in labels

    kernel.shutdown()
    assert not _alive(kernel.pid)
    assert _deletes(kube_emulator, "nbk-one") and _deletes(kube_emulator, "nbk-two")
    assert not _deletes(kube_emulator, "nbk-kept")
    left = _computes(kube_emulator)
    assert "nbk-kept" in left
    for name in ("nbk-one", "nbk-two"):
        assert name not in left or left[name]["metadata"].get("deletionTimestamp")


def test_kernel_restart_deletes_its_computes(kube_emulator, fake_operator, kube_kernel_env, kernel_factory):
    kernel = kernel_factory(**kube_kernel_env)
    kernel.execute("from skytorch.client import Compute\nr = Compute('nbk-restart')\nawait r.ready(timeout=60)")
    assert "nbk-restart" in _computes(kube_emulator)
    kernel.km.restart_kernel(now=False)
    assert _deletes(kube_emulator, "nbk-restart")


def test_gc_from_a_new_kernel_deletes_what_a_sigkilled_kernel_left(
        kube_emulator, fake_operator, kube_kernel_env, kernel_factory):
    dead = kernel_factory(**kube_kernel_env)
    dead.execute(
        "%load_ext skytorch\n"
        "%skytorch up nbk-orphan-1 --wait\n"
        "%skytorch up nbk-orphan-2\n"
        "%skytorch up nbk-orphan-kept --keep --wait"
    )
    dead.kill()  # SIGKILL: no shutdown hook, no atexit
    assert not _alive(dead.pid)
    assert {"nbk-orphan-1", "nbk-orphan-2", "nbk-orphan-kept"} <= set(_computes(kube_emulator))
    assert not _deletes(kube_emulator, "nbk-orphan-1")

    fresh = kernel_factory(**kube_kernel_env)
    fresh.execute("%load_ext skytorch\n%skytorch up nbk-alive --wait")
    # the namespace-wide dashboard lists the dead kernel's Computes next to this kernel's own
    fresh.execute("import skytorch.notebook\nwhole = skytorch.notebook.dashboard(all=True)\n"
                  "mine = skytorch.notebook.dashboard()")
    whole = ast.literal_eval(fresh.execute("sorted(whole.rows)").value())
    assert {"nbk-alive", "nbk-orphan-1", "nbk-orphan-2", "nbk-orphan-kept"} <= set(whole)
    assert ast.literal_eval(fresh.execute("sorted(mine.rows)").value()) == ["nbk-alive"]
    assert "another kernel" in fresh.execute("whole.rows['nbk-orphan-1'].cells[4].value").value()
    dry = fresh.execute("%skytorch gc --dry-run")
    assert "Would delete Compute nbk-orphan-1" in dry.stdout and "nbk-alive" not in dry.stdout
    assert not _deletes(kube_emulator, "nbk-orphan-1")
    result = fresh.execute("%skytorch gc")
    assert "Deleted Compute nbk-orphan-1" in result.stdout and "Deleted Compute nbk-orphan-2" in result.stdout
    assert f"kernel process {dead.pid} is gone" in result.stdout
    assert "nbk-orphan-kept" not in result.stdout and "nbk-alive" not in result.stdout
    assert _deletes(kube_emulator, "nbk-orphan-1") and _deletes(kube_emulator, "nbk-orphan-2")
    assert not _deletes(kube_emulator, "nbk-orphan-kept") and not _deletes(kube_emulator, "nbk-alive")
    assert fresh.execute("nbk_alive.state").value() == "'Ready'"
    again = fresh.execute("%skytorch gc")
    assert "No Computes left behind" in again.stdout


def test_shutdown_of_a_busy_kernel_still_deletes_its_computes(
        kube_emulator, fake_operator, kube_kernel_env, kernel_factory):
    kernel = kernel_factory(**kube_kernel_env)
    kernel.execute("from skytorch.client import Compute\nbusy = Compute('nbk-busy')\nawait busy.ready(timeout=60)")
    # a cell that blocks the kernel's loop and shrugs off the interrupt Jupyter sends before shutting down
    kernel.kc.execute("import time\nwhile True:\n    try:\n        time.sleep(100)\n"
                      "    except KeyboardInterrupt:\n        pass")
    time.sleep(1)
    kernel.shutdown()
    assert not _alive(kernel.pid)
    assert _deletes(kube_emulator, "nbk-busy")
