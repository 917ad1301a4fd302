"""The kopf handlers of the SkyTorch operator, registered on their own :data:`registry`.

Each handler is a thin adapter: the work happens in
:class:`skytorch.operator.reconciler.Reconciler`, found in kopf's ``memo``
(``memo.reconciler``), and the connection details in ``memo.client_config``.
"""

from __future__ import annotations

import inspect
from typing import Any

import kopf
from kubernetes_asyncio.client import Configuration

from skytorch.operator import manifests
from skytorch.resources import GROUP, OPERATOR_FIELD_MANAGER, PLURAL, VERSION

#: The registry :func:`skytorch.operator.run` hands to kopf (not kopf's global default one).
registry = kopf.OperatorRegistry()

_CHILD_LABELS = {manifests.NAME_LABEL: manifests.SERVER_NAME, manifests.MANAGED_BY_LABEL: OPERATOR_FIELD_MANAGER}


@kopf.on.login(registry=registry)
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same ``kubernetes_asyncio`` configuration the reconciler uses."""
    config: Configuration = memo.client_config
    header = config.get_api_key_with_prefix("BearerToken")  # where kubeconfig and in-cluster loaders put the token
    if inspect.isawaitable(header):  # a coroutine in newer kubernetes_asyncio
        header = await header
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        default_namespace=memo.default_namespace,
    )


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
async def reconcile_compute(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Compute appeared, changed its spec, or was found at start-up: reconcile it."""
    if body.metadata.get("deletionTimestamp"):
        return
    await memo.reconciler.reconcile(dict(body))


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def compute_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Forget a deleted Compute (no finalizer: deleting a Compute never waits for the operator)."""
    if event["type"] == "DELETED":
        meta = event["object"]["metadata"]
        memo.reconciler.forget(meta["namespace"], meta["name"])


@kopf.on.event("apps", "v1", "statefulsets", labels=_CHILD_LABELS, registry=registry)
async def statefulset_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A Compute's StatefulSet changed (e.g. its ready replicas): refresh the Compute's status."""
    if event["type"] in ("ADDED", "MODIFIED", None):
        await memo.reconciler.statefulset_changed(event["object"])


@kopf.on.event("", "v1", "pods", labels=_CHILD_LABELS, registry=registry)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A Compute's pod changed: warn on the Compute about image pull failures and crash loops."""
    if event["type"] in ("ADDED", "MODIFIED", None):
        await memo.reconciler.pod_changed(event["object"])
