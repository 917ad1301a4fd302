"""Fixtures of the Kubernetes API emulator (see :mod:`tests.emulator`).

- ``kube_emulator``: a running :class:`~tests.emulator.KubeEmulator` (own thread and loop).
- ``kubeconfig``: a kubeconfig file for it (namespace ``default``), also set as ``KUBECONFIG``.
- ``fake_operator``: a started :class:`~tests.emulator.FakeOperator` (Ready 0.2 s after apply).
- ``kube_api_client``: a ``kubernetes_asyncio`` ``ApiClient`` loaded from that kubeconfig.
- ``kube_emulator_process``: the emulator as a separate process (``python -m tests.emulator``) with the
  fake operator, for clients in other processes; yields ``(url, kubeconfig_path)``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import AsyncIterator, Iterator

import pytest

from tests.emulator import FakeOperator, KubeEmulator

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def kube_emulator() -> Iterator[KubeEmulator]:
    """A Kubernetes API emulator serving on 127.0.0.1 from a background thread."""
    emulator = KubeEmulator()
    with emulator.running():
        yield emulator


@pytest.fixture
def kubeconfig(kube_emulator: KubeEmulator, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A real kubeconfig file for the emulator (context namespace ``default``), exported as ``KUBECONFIG``."""
    path = kube_emulator.write_kubeconfig(tmp_path / "kubeconfig", "default")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
def fake_operator(kube_emulator: KubeEmulator) -> Iterator[FakeOperator]:
    """A fake SkyTorch operator: Computes turn Ready 0.2 s after they are applied."""
    operator = FakeOperator(kube_emulator, ready_delay=0.2).start()
    yield operator
    operator.stop()


@pytest.fixture
async def kube_api_client(kubeconfig: pathlib.Path) -> AsyncIterator[object]:
    """A ``kubernetes_asyncio.client.ApiClient`` configured from the emulator's kubeconfig."""
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
def kube_emulator_process(tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    """The emulator and fake operator in a child process; yields ``(url, kubeconfig_path)``."""
    path = tmp_path / "kubeconfig-process"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator", "--port", "0", "--kubeconfig", str(path), "--fake-operator"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the emulator process did not start: {line!r}")
        yield line.split("listening on ", 1)[1].strip(), path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
