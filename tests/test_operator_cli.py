"""``python -m skytorch.operator`` as a process: configuration from flags and SKYTORCH_* variables, clean SIGTERM."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from typing import Any

import pytest

from skytorch.resources import API_VERSION, KIND
from tests.plugins.operator import poll

pytestmark = pytest.mark.timeout(120)
ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_operator_process_serves_computes_and_stops_on_sigterm(kube_emulator: Any, kubeconfig: pathlib.Path,
                                                               tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "SKYTORCH_SERVER_IMAGE": "registry.test/from-env:1", "SKYTORCH_OPERATOR_NAMESPACES": "default",
           "PYTHONPATH": str(ROOT)}
    env.pop("KUBECONFIG", None)
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "skytorch.operator", "--kubeconfig", str(kubeconfig)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        kube_emulator.create({"apiVersion": API_VERSION, "kind": KIND,
                              "metadata": {"name": "from-cli", "namespace": "default"}, "spec": {"suspend": False}})
        sts = poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", "from-cli", "default"), timeout=60,
                   what=f"the StatefulSet; operator log:\n{log.read_text() if log.exists() else ''}")
        assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/from-env:1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_operator_refuses_an_empty_server_image(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([sys.executable, "-m", "skytorch.operator", "--server-image", " "],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "SKYTORCH_SERVER_IMAGE" in result.stderr and "must not be empty" in result.stderr


def test_operator_imports_neither_the_client_nor_torch() -> None:
    """The operator image ships without torch, and the operator never imports skytorch.client."""
    code = ("import sys, skytorch.operator, skytorch.operator.__main__; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('skytorch.client', 'torch.', "
            "'skytorch.transport', 'IPython', 'ipywidgets'))); print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
