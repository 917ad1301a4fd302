"""Everything together, without a cluster.

``Compute(...)`` from :mod:`skytorch.client` (Kubernetes backend, through a real
kubeconfig) -> the real operator (kopf) reconciles it on the API emulator -> a
test helper playing the kubelet runs the StatefulSet's pod as a local
``python -m skytorch.server`` and marks it ready -> ``ready()`` returns ->
tensors stream through the ``host``/``port`` override (as the seed's
port-forward example) -> ``suspend()``/``resume()`` stop and restart the server
-> ``delete()`` -> the helper stops the server.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterator

import pytest
import torch

from skytorch.resources import API_VERSION, KIND
from tests.plugins.operator import FakeKubelet, free_port, poll

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

NAME = "e2e"


@pytest.fixture
def kubernetes_client(client_env: pathlib.Path, kubeconfig: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client on the Kubernetes backend, configured by the emulator's kubeconfig."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("SKYTORCH_BACKEND", "kubernetes")


@pytest.fixture
def kubelet(kube_emulator: Any, tmp_path: pathlib.Path) -> Iterator[tuple[FakeKubelet, int]]:
    """The fake kubelet, with the port the Compute's server will listen on (the port-forward's local port)."""
    port = free_port()
    helper = FakeKubelet(kube_emulator, "default", {NAME: port}, tmp_path).start()
    try:
        yield helper, port
    finally:
        helper.stop()
    assert all(proc.poll() is not None for proc in helper.started), "every server the kubelet started is stopped"


async def test_client_operator_and_server_end_to_end(kube_emulator: Any, skytorch_operator: Any,
                                                     kubernetes_client: None, kubelet: tuple[FakeKubelet, int]) -> None:
    from skytorch.client import Compute

    helper, port = kubelet
    events: list[Any] = []
    compute = Compute(NAME, image="registry.test/skytorch-server:e2e", env={"CHUNK_SIZE": "65536"},
                      labels={"team": "ml"}, host="127.0.0.1", port=port, on_events=events.append)
    try:
        await compute.ready(timeout=120)
        assert compute.state == "Ready" and compute.backend_kind == "kubernetes"
        assert compute.endpoint == ("127.0.0.1", port)
        stored = kube_emulator.get(API_VERSION, KIND, NAME, "default")
        ready = next(c for c in stored["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "StatefulSetReady")
        sts = kube_emulator.get("apps/v1", "StatefulSet", NAME, "default")
        container = sts["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.test/skytorch-server:e2e"
        assert {"name": "CHUNK_SIZE", "value": "65536"} in container["env"]
        server = helper.servers[NAME]
        assert server.poll() is None

        tensor = torch.randn(256, 256)
        response = await compute.send_tensors(tensor, torch.arange(10))
        assert response.success and len(response.tensor_ids) == 2
        received = await compute.receive_tensors(count=2, parameters={"shape": "8,4"})
        assert [t.shape for t in received] == [torch.Size([8, 4])] * 2
        inputs = [torch.randn(64, 64), torch.arange(12, dtype=torch.int64).reshape(3, 4)]
        outputs = await compute.stream_tensors(*inputs)
        assert all(torch.equal(a, b) for a, b in zip(inputs, outputs))

        # Suspend: the operator scales to zero and the kubelet stops the server; resume brings a new one.
        await compute.suspend()
        poll(lambda: server.poll() is not None, what="the server stopped on suspend")
        poll(lambda: any(c["type"] == "Suspended" and c["status"] == "True" for c in
                         kube_emulator.get(API_VERSION, KIND, NAME, "default")["status"]["conditions"]),
             what="Suspended=True")
        await compute.resume(timeout=120)
        suspended = next(c for c in kube_emulator.get(API_VERSION, KIND, NAME, "default")["status"]["conditions"]
                         if c["type"] == "Suspended")
        assert (suspended["status"], suspended["reason"]) == ("False", "Resumed")
        server = helper.servers[NAME]
        again = await compute.stream_tensors(torch.ones(3, 3))
        assert torch.equal(again[0], torch.ones(3, 3))
    finally:
        await compute.delete(grace_period_seconds=0)

    poll(lambda: kube_emulator.get(API_VERSION, KIND, NAME, "default") is None, what="the Compute deleted")
    poll(lambda: kube_emulator.get("apps/v1", "StatefulSet", NAME, "default") is None, what="the StatefulSet collected")
    poll(lambda: kube_emulator.get("v1", "Service", NAME, "default") is None, what="the Service collected")
    poll(lambda: server.poll() is not None, what="the kubelet to stop the server")
    reasons = [getattr(e, "reason", None) for e in events]
    for reason in ("Created", "Ready", "Suspended", "Resumed"):
        assert reason in reasons, f"the client saw the operator's events: {reasons}"
