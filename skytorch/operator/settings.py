"""Configuration of the SkyTorch operator.

Explicit arguments first, then ``SKYTORCH_*`` environment variables, then
defaults:

``SKYTORCH_SERVER_IMAGE``
    image of a Compute whose spec names none (default ``skytorch-server:latest``).
``SKYTORCH_OPERATOR_NAMESPACES``
    comma-separated namespaces (or kopf globs) to watch; empty means cluster-wide.
``SKYTORCH_CLUSTER_DOMAIN``
    cluster DNS domain used in ``status.addresses`` (default ``cluster.local``).
``SKYTORCH_OPERATOR_KUBECONFIG``
    kubeconfig file to use instead of the in-cluster service account
    (then ``KUBECONFIG``, then ``~/.kube/config``).
``SKYTORCH_OPERATOR_LIVENESS``
    kopf liveness endpoint, e.g. ``http://0.0.0.0:8080/healthz`` (default none).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from skytorch.errors import SkyTorchError
from skytorch.resources import DEFAULT_CLUSTER_DOMAIN

DEFAULT_SERVER_IMAGE = "skytorch-server:latest"


class OperatorConfigError(SkyTorchError):
    """The operator's configuration is invalid (names the setting and the problem)."""


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs to know besides the Computes themselves."""

    #: Image of a Compute whose ``spec.image`` is unset.
    server_image: str = DEFAULT_SERVER_IMAGE
    #: Namespaces to watch; empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    #: Cluster DNS domain for ``status.addresses``.
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    #: A kubeconfig file to log in with; ``None``: in-cluster, then ``KUBECONFIG``/``~/.kube/config``.
    kubeconfig: str | None = None
    #: kopf's liveness endpoint (``http://host:port/path``), or ``None``.
    liveness_endpoint: str | None = None
    #: Server-side timeout of kopf's watch requests (seconds): a watch is renewed at least this often.
    watch_server_timeout: float | None = 600
    #: Post Kubernetes Events on Computes.
    post_events: bool = True
    #: Name in the Events' ``reportingComponent``.
    reporting_component: str = "skytorch-operator"

    def __post_init__(self) -> None:
        if not self.server_image or not self.server_image.strip():
            raise OperatorConfigError("SKYTORCH_SERVER_IMAGE (server_image) must not be empty")
        if not self.cluster_domain or not self.cluster_domain.strip("."):
            raise OperatorConfigError("SKYTORCH_CLUSTER_DOMAIN (cluster_domain) must not be empty")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "OperatorConfig":
        """Build from ``SKYTORCH_*`` variables; keyword ``overrides`` win over them."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get("SKYTORCH_SERVER_IMAGE"):
            values["server_image"] = env["SKYTORCH_SERVER_IMAGE"]
        if env.get("SKYTORCH_OPERATOR_NAMESPACES"):
            values["namespaces"] = tuple(n.strip() for n in env["SKYTORCH_OPERATOR_NAMESPACES"].split(",") if n.strip())
        if env.get("SKYTORCH_CLUSTER_DOMAIN"):
            values["cluster_domain"] = env["SKYTORCH_CLUSTER_DOMAIN"]
        if env.get("SKYTORCH_OPERATOR_KUBECONFIG"):
            values["kubeconfig"] = env["SKYTORCH_OPERATOR_KUBECONFIG"]
        if env.get("SKYTORCH_OPERATOR_LIVENESS"):
            values["liveness_endpoint"] = env["SKYTORCH_OPERATOR_LIVENESS"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("namespaces"), (list, str)):
            raw = values["namespaces"]
            values["namespaces"] = (raw,) if isinstance(raw, str) else tuple(raw)  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]
