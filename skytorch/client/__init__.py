"""The public client API: :class:`Compute`, :class:`Cluster`, :func:`init`, :func:`log_event`.

Computes run on Kubernetes when a configuration is found (kubeconfig or
in-cluster service account), otherwise as local server processes (the
embedded default). ``SKYTORCH_BACKEND=kubernetes|local`` forces one.
Importing this package never imports IPython or ipywidgets.
"""

from __future__ import annotations

from skytorch.client._config import current_backend, init
from skytorch.client.cluster import Cluster
from skytorch.client.compute import STATES, Compute, Transfer
from skytorch.client.events import log_event
from skytorch.errors import (
    BackendError,
    ComputeError,
    ComputeNotReadyError,
    ComputeSpecError,
    ComputeTimeoutError,
    KubernetesApiError,
    ServerUnavailableError,
    SkyTorchError,
    TransportError,
)

__all__ = [
    "STATES", "BackendError", "Cluster", "Compute", "ComputeError", "ComputeNotReadyError", "ComputeSpecError",
    "ComputeTimeoutError", "KubernetesApiError", "ServerUnavailableError", "SkyTorchError", "Transfer",
    "TransportError", "current_backend", "init", "log_event",
]
