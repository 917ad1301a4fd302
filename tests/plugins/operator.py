"""Fixtures of the SkyTorch operator: the real kopf operator running against the API emulator.

- ``operator_config``: the :class:`~skytorch.operator.OperatorConfig` used (namespace ``default``,
  kubeconfig of the emulator, a recognisable default server image).
- ``skytorch_operator``: a started :class:`OperatorThread` (stopped and joined after the test).
- ``wait_for``: poll a condition on the test's side until it holds (a hang guard, not a timing assertion).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import pytest

from skytorch.operator import OperatorConfig, kopf_settings, run

logger = logging.getLogger(__name__)
T = TypeVar("T")

TEST_SERVER_IMAGE = "registry.test/skytorch-server:operator-test"
CRD_PATH = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "crds" / "compute.skytorch.dev_computes.yaml"


def load_crd_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the Compute CRD under deploy/."""
    import yaml

    (crd,) = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_compute(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    """Validate a Compute as the API server would: the CRD's schema, then its two CEL name rules.

    The CEL rules are a regex match and a size bound on ``metadata.name``; they are
    read from the CRD and evaluated here (``jsonschema`` does not run CEL).
    """
    import re

    import jsonschema

    jsonschema.Draft4Validator(schema).validate(obj)
    for rule in schema["x-kubernetes-validations"]:
        name = obj["metadata"]["name"]
        if m := re.fullmatch(r"self\.metadata\.name\.matches\('(.+)'\)", rule["rule"]):
            ok = re.search(m.group(1), name) is not None
        elif m := re.fullmatch(r"size\(self\.metadata\.name\) <= (\d+)", rule["rule"]):
            ok = len(name) <= int(m.group(1))
        else:
            raise AssertionError(f"a CEL rule this helper does not know: {rule['rule']}")
        if not ok:
            raise jsonschema.ValidationError(rule["message"])


class OperatorThread:
    """``skytorch.operator.run`` in a thread with its own event loop, stopped through kopf's stop flag."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="skytorch-operator", daemon=True)

    def _main(self) -> None:
        settings = kopf_settings(self.config)
        # Short server-side watch timeouts and quick reconnects: a test sees changes without waiting.
        settings.watching.server_timeout = 10
        settings.watching.client_timeout = 20
        settings.watching.reconnect_backoff = 0.1
        settings.posting.idle_timeout = 0.2
        settings.queueing.idle_timeout = 1.0
        settings.background.cancellation_polling = 0.1
        try:
            asyncio.run(run(self.config, stop_flag=self.stop_flag, ready_flag=self.ready_flag, settings=settings))
        except BaseException as exc:  # reported to the test through .error
            logger.exception("the operator thread failed")
            self.error = exc
        finally:
            self.ready_flag.set()

    def start(self, timeout: float = 60) -> "OperatorThread":
        """Start and wait until kopf has started (its ready flag)."""
        self._thread.start()
        if not self.ready_flag.wait(timeout) or self.error is not None:
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        return self

    @property
    def alive(self) -> bool:
        """Whether the operator's thread is still running."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 60) -> None:
        """Ask kopf to stop, and wait for the thread to end."""
        self.stop_flag.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop")


@pytest.fixture
def operator_config(kubeconfig: pathlib.Path) -> OperatorConfig:
    """Operator configuration for the emulator's ``default`` namespace."""
    return OperatorConfig(server_image=TEST_SERVER_IMAGE, namespaces=("default",), kubeconfig=str(kubeconfig))


@pytest.fixture
def skytorch_operator(kube_emulator: Any, operator_config: OperatorConfig) -> Iterator[OperatorThread]:
    """The real SkyTorch operator (kopf) serving the emulator's ``default`` namespace."""
    operator = OperatorThread(operator_config).start()
    try:
        yield operator
    finally:
        operator.stop()
    assert operator.error is None, f"the operator crashed: {operator.error!r}"


def poll(check: Callable[[], T | None], *, timeout: float = 30, interval: float = 0.05, what: str = "") -> T:
    """Call ``check`` until it returns something truthy; fail (naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(interval)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """:func:`poll`, as a fixture."""
    return poll


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server the test starts on a known port)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeKubelet:
    """Plays the StatefulSet controller and the kubelet for the operator's StatefulSets, on loopback.

    For each StatefulSet of the operator in ``namespace`` that wants a replica,
    it runs the pod's ``server`` container as a local ``python -m skytorch.server``
    (with the container's plain env values, on 127.0.0.1 and the port given in
    ``ports`` for that Compute — the part ``kubectl port-forward`` plays on a
    cluster), creates the pod object, and once the server has written its ready
    file marks the pod and the StatefulSet's replicas ready. When the StatefulSet
    scales to zero or is deleted, it stops the server. Every server is stopped
    by :meth:`stop`.
    """

    def __init__(self, emulator: Any, namespace: str, ports: dict[str, int], workdir: pathlib.Path) -> None:
        self.emulator = emulator
        self.namespace = namespace
        self.ports = ports
        self.workdir = workdir
        self.servers: dict[str, Any] = {}  # Compute name -> subprocess.Popen
        self.started: list[Any] = []
        self._ready: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fake-kubelet", daemon=True)

    def start(self) -> "FakeKubelet":
        """Start following StatefulSets."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following and stop every server still running."""
        self._stop.set()
        self._thread.join(30)
        for name in list(self.servers):
            self._stop_server(name)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception:  # keep playing the kubelet; the test sees the effects
                logger.exception("fake kubelet sync failed")
            self._stop.wait(0.05)

    def _sync(self) -> None:
        from skytorch.operator import manifests

        wanted = {}
        for sts in self.emulator.list("apps/v1", "StatefulSet", self.namespace):
            labels = sts["metadata"].get("labels") or {}
            if labels.get(manifests.MANAGED_BY_LABEL) == "skytorch-operator" and not sts["metadata"].get(
                    "deletionTimestamp"):
                wanted[sts["metadata"]["name"]] = sts
        for name in list(self.servers):
            sts = wanted.get(name)
            if sts is None or not sts["spec"].get("replicas") or self.servers[name].poll() is not None:
                logger.info("fake kubelet: stopping the server of %s (StatefulSet %s, exit code %s)", name,
                            "gone" if sts is None else f"replicas {sts['spec'].get('replicas')}",
                            self.servers[name].poll())
                if sts is not None:  # as a kubelet: the pod stops being ready, then its container stops
                    self._report(sts, ready=0)
                self._stop_server(name)
        for name, sts in wanted.items():
            if sts["spec"].get("replicas") and name not in self.servers:
                self._start_server(sts)
            if name in self.servers and name not in self._ready and self._ready_file(name).exists():
                self._ready.add(name)
                logger.info("fake kubelet: the server of %s is ready", name)
                self._report(sts, ready=1)

    def _ready_file(self, name: str) -> pathlib.Path:
        return self.workdir / f"{name}.ready"

    def _start_server(self, sts: dict[str, Any]) -> None:
        import os
        import subprocess
        import sys

        name = sts["metadata"]["name"]
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        env = dict(os.environ)
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        self._ready_file(name).unlink(missing_ok=True)
        port = self.ports.get(name) or free_port()
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "skytorch.server", "--host", "127.0.0.1", "--port", str(port),
             "--ready-file", str(self._ready_file(name))],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.servers[name] = proc
        self.started.append(proc)
        logger.info("fake kubelet: started the server of %s on 127.0.0.1:%d (pid %d)", name, port, proc.pid)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-0", "namespace": self.namespace,
                            "labels": sts["spec"]["template"]["metadata"]["labels"],
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                                 "uid": sts["metadata"]["uid"], "controller": True}]},
               "spec": sts["spec"]["template"]["spec"]}
        if self.emulator.get("v1", "Pod", f"{name}-0", self.namespace) is None:
            self.emulator.create(pod, manager="kubelet")

    def _stop_server(self, name: str) -> None:
        proc = self.servers.pop(name)
        self._ready.discard(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except Exception:
                proc.kill()
                proc.wait(5)
        if self.emulator.get("v1", "Pod", f"{name}-0", self.namespace) is not None:
            self.emulator.delete("v1", "Pod", f"{name}-0", self.namespace, grace_period_seconds=0)

    def _report(self, sts: dict[str, Any], ready: int) -> None:
        name = sts["metadata"]["name"]
        if self.emulator.get("apps/v1", "StatefulSet", name, self.namespace) is None:
            return
        self.emulator.patch("apps/v1", "StatefulSet", name, {"status": {
            "replicas": ready, "readyReplicas": ready, "availableReplicas": ready,
            "observedGeneration": sts["metadata"].get("generation", 1)}}, self.namespace, subresource="status",
            manager="kube-controller-manager")
