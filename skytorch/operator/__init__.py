"""The SkyTorch operator: reconciles each ``Compute`` into a StatefulSet and a Service.

Run it with ``python -m skytorch.operator`` (see :mod:`skytorch.operator.settings`
for its configuration), or from Python::

    await skytorch.operator.run(OperatorConfig(namespaces=("ml",)))

Built on kopf; the manifests are plain dicts built by the pure functions of
:mod:`skytorch.operator.manifests`, the status by :mod:`skytorch.operator.status`.
This package never imports :mod:`skytorch.client`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from skytorch.errors import BackendError
from skytorch.operator.handlers import registry
from skytorch.operator.manifests import InvalidComputeSpec
from skytorch.operator.reconciler import Reconciler
from skytorch.operator.settings import OperatorConfig, OperatorConfigError
from skytorch.resources import GROUP

__all__ = ["InvalidComputeSpec", "OperatorConfig", "OperatorConfigError", "kopf_settings",
           "load_client_configuration", "registry", "run"]

logger = logging.getLogger(__name__)


def kopf_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf's settings for this operator: events on, no peering, state kept in annotations only.

    Handler progress lives in annotations, never in ``status`` (the CRD's status
    schema has only ``conditions`` and ``addresses``).
    """
    settings = kopf.OperatorSettings()
    settings.posting.enabled = config.post_events
    settings.posting.reporting_component = config.reporting_component
    settings.peering.standalone = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP,
                                                                           key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.watching.server_timeout = config.watch_server_timeout
    settings.networking.error_backoffs = (0.5, 1, 2, 5)
    return settings


async def load_client_configuration(config: OperatorConfig) -> tuple[k8s.Configuration, str | None]:
    """The ``kubernetes_asyncio`` configuration and default namespace to connect with.

    ``config.kubeconfig`` if set; else the in-cluster service account; else
    ``KUBECONFIG`` / ``~/.kube/config``.
    """
    client_config = k8s.Configuration()
    if not config.kubeconfig:
        try:
            k8s_config.load_incluster_config(client_configuration=client_config)
            return client_config, None
        except k8s_config.ConfigException:
            pass
    try:  # config.kubeconfig, else KUBECONFIG / ~/.kube/config
        loader = await k8s_config.load_kube_config(config_file=config.kubeconfig, client_configuration=client_config)
    except (k8s_config.ConfigException, OSError) as exc:
        if config.kubeconfig:
            raise BackendError(f"The SkyTorch operator could not load kubeconfig {config.kubeconfig} "
                               f"(SKYTORCH_OPERATOR_KUBECONFIG or --kubeconfig): {exc}") from exc
        raise BackendError("The SkyTorch operator found no Kubernetes credentials: not in a cluster, and no "
                           f"kubeconfig (set SKYTORCH_OPERATOR_KUBECONFIG or KUBECONFIG): {exc}") from exc
    return client_config, (loader.current_context.get("context") or {}).get("namespace")


async def run(config: OperatorConfig, *, stop_flag: threading.Event | Any = None,
              ready_flag: threading.Event | Any = None, settings: kopf.OperatorSettings | None = None) -> None:
    """Run the operator until ``stop_flag`` is set (or the process is signalled).

    Watches ``config.namespaces``, or every namespace when empty. ``ready_flag``
    is set once kopf has started its watches. The ``kubernetes_asyncio`` client
    it creates is closed when it returns.
    """
    client_config, default_namespace = await load_client_configuration(config)
    api = k8s.ApiClient(client_config)
    try:
        memo = kopf.Memo(client_config=client_config, default_namespace=default_namespace,
                         reconciler=Reconciler(api, config))
        logger.info("SkyTorch operator starting: namespaces=%s, default image %s",
                    ",".join(config.namespaces) or "<all>", config.server_image)
        await kopf.operator(
            registry=registry,
            settings=settings or kopf_settings(config),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=config.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=memo,
        )
    finally:
        await api.close()
