"""A Kubernetes API server emulator for tests: real HTTP on loopback, reached through a real kubeconfig.

The real ``kubernetes_asyncio`` client (and kopf) run unmodified against it.
It keeps objects of the core, apps, apiextensions, coordination and
``compute.skytorch.dev`` groups (and of any CRD created in it) with the rules
SkyTorch depends on: server-side apply with ``managedFields``, the status
subresource, one global resourceVersion, watches with selectors,
resourceVersion replay and ``410 Gone``, DELETE with grace periods, finalizers
and garbage collection, and Events. Tests add failures and read a request log.

Quick use::

    emulator = KubeEmulator()
    with emulator.running():
        emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace="team-a")
        ...
"""

import os
import pathlib

from tests.emulator.control import EmulatorControl
from tests.emulator.errors import StatusError
from tests.emulator.fake_operator import FakeOperator
from tests.emulator.resources import ResourceType
from tests.emulator.server import FailureRule, KubeEmulator, RequestRecord
from tests.emulator.store import Store

__all__ = ["EmulatorControl", "FailureRule", "FakeOperator", "KubeEmulator", "RequestRecord", "ResourceType", "StatusError", "Store",
           "write_kubeconfig"]


def write_kubeconfig(emulator: KubeEmulator, path: "str | os.PathLike[str]", namespace: str = "default", *,
                     token: bool = True) -> pathlib.Path:
    """Write a kubeconfig for ``emulator`` at ``path`` (see :meth:`KubeEmulator.write_kubeconfig`)."""
    return emulator.write_kubeconfig(path, namespace, token=token)
