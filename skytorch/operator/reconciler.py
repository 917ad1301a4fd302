"""The operator's I/O: apply a Compute's children, write its status, post its events.

One :class:`Reconciler` per running operator, owned by :func:`skytorch.operator.run`
and reached from the kopf handlers through kopf's ``memo``. All Kubernetes calls
go through ``kubernetes_asyncio`` and return plain dicts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

import kopf
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from skytorch.kube import read_json, status_body
from skytorch.operator import manifests
from skytorch.operator.manifests import InvalidComputeSpec
from skytorch.operator.settings import OperatorConfig
from skytorch.operator.status import Failure, desired_status, transitions
from skytorch.resources import (
    GROUP,
    KIND,
    OPERATOR_FIELD_MANAGER,
    PLURAL,
    READY,
    SUSPENDED,
    VERSION,
    service_hostname,
)

logger = logging.getLogger(__name__)

#: Waiting reasons of a pod's container that mean it will not start by itself.
POD_FAILURE_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CrashLoopBackOff",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
#: Statuses of an API error that no retry will fix (the object itself is refused).
_PERMANENT = frozenset({400, 403, 404, 409, 422})

Key = tuple[str, str]


class Reconciler:
    """Turns Computes into a StatefulSet and a Service, and keeps their status and events current."""

    def __init__(self, api: k8s.ApiClient, config: OperatorConfig) -> None:
        self.config = config
        self._apps = k8s.AppsV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._custom = k8s.CustomObjectsApi(api)
        self._locks: dict[Key, asyncio.Lock] = {}
        self._failures: dict[Key, Failure] = {}
        self._pod_warnings: dict[Key, set[tuple[Any, ...]]] = {}

    # -- entry points (one per kopf handler) ---------------------------------------------------

    async def reconcile(self, compute: Mapping[str, Any]) -> None:
        """Apply the Compute's Service and StatefulSet, then bring its status up to date.

        A spec that cannot be honoured gets a Warning event and ``Ready=False``
        with the reason; it is not retried until the spec changes. Transient API
        errors raise :class:`kopf.TemporaryError` so that kopf retries.
        """
        key = _key(compute)
        where = f"{key[0]}/{key[1]}"
        async with self._lock(key):
            try:
                sts = manifests.statefulset(compute, self.config)  # checks the spec first
                svc = manifests.service(compute)
            except InvalidComputeSpec as exc:
                await self._fail(compute, Failure(exc.reason, str(exc)))
                return
            try:
                await self._apply(self._core.patch_namespaced_service, svc)
                applied, created = await self._apply(self._apps.patch_namespaced_stateful_set, sts)
            except ApiException as exc:
                if exc.status in _PERMANENT:
                    await self._fail(compute, Failure("ApplyFailed", f"Compute {where}: the API rejected its "
                                                      f"StatefulSet or Service: {_api_message(exc)}"))
                    return
                raise kopf.TemporaryError(f"Applying the children of Compute {where} failed: "
                                          f"{_api_message(exc)}", delay=2) from exc
            self._failures.pop(key, None)
            if created:
                self._event(compute, "Normal", "Created", f"Created StatefulSet {key[1]} and Service {key[1]}")
            await self._update_status(key, applied)

    async def statefulset_changed(self, statefulset: Mapping[str, Any]) -> None:
        """Refresh the owning Compute's status after its StatefulSet changed."""
        owner = _controller_owner(statefulset)
        if owner is None:
            return
        key = (statefulset["metadata"]["namespace"], owner["name"])
        async with self._lock(key):
            await self._update_status(key, statefulset, owner_uid=owner.get("uid"))

    async def pod_changed(self, pod: Mapping[str, Any]) -> None:
        """Post a Warning on the Compute when its pod cannot pull its image or crash-loops.

        Once per pod, container and reason: a crash loop is one Warning, not one per restart.
        """
        meta = pod.get("metadata") or {}
        name = (meta.get("labels") or {}).get(manifests.INSTANCE_LABEL)
        if not name:
            return
        key = (meta["namespace"], name)
        status = pod.get("status") or {}
        problems = []
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = ((cs.get("state") or {}).get("waiting") or {})
            if waiting.get("reason") in POD_FAILURE_REASONS:
                problems.append(((meta.get("uid"), cs.get("name"), waiting["reason"]),
                                 f"Pod {meta.get('name')}: container {cs.get('name')} is in {waiting['reason']}"
                                 + (f": {waiting['message']}" if waiting.get("message") else "")))
        seen = self._pod_warnings.setdefault(key, set())
        fresh = [(sig, message) for sig, message in problems if sig not in seen]
        if not fresh:
            return
        compute = await self._read_compute(*key)
        if compute is None:
            return
        for sig, message in fresh:
            seen.add(sig)
            self._event(compute, "Warning", sig[2], message)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is remembered about a deleted Compute."""
        key = (namespace, name)
        self._failures.pop(key, None)
        self._pod_warnings.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    # -- status ------------------------------------------------------------------------------

    async def _fail(self, compute: Mapping[str, Any], failure: Failure) -> None:
        key = _key(compute)
        logger.warning("%s", failure.message)
        self._event(compute, "Warning", failure.reason, failure.message)
        self._failures[key] = failure
        await self._update_status(key, await self._read_statefulset(*key))

    async def _update_status(self, key: Key, statefulset: Mapping[str, Any] | None, *,
                             owner_uid: str | None = None) -> None:
        """Write the Compute's status if it differs from what is stored; post events for transitions."""
        compute = await self._read_compute(*key)
        if compute is None or (owner_uid is not None and compute["metadata"].get("uid") != owner_uid):
            return
        if compute["metadata"].get("deletionTimestamp"):
            return
        old = compute.get("status") or {}
        new = desired_status(compute, statefulset, failure=self._failures.get(key),
                             hostname=service_hostname(key[1], key[0], self.config.cluster_domain))
        if new == old:
            return
        try:
            await self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, key[0], PLURAL, key[1], {"status": new},
                field_manager=OPERATOR_FIELD_MANAGER, _content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return
            raise kopf.TemporaryError(f"Writing the status of Compute {key[0]}/{key[1]} failed: "
                                      f"{_api_message(exc)}", delay=2) from exc
        for change in transitions(old, new):
            if change.type == READY and change.status == "True":
                self._event(compute, "Normal", "Ready", f"Compute is ready: {change.message}")
            elif change.type == SUSPENDED:
                self._event(compute, "Normal", change.reason, change.message)

    # -- API calls ---------------------------------------------------------------------------

    async def _apply(self, patch: Any, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Server-side apply of ``body`` with ``patch`` (a ``patch_namespaced_*`` method), as the operator.

        Returns the object and whether this apply created it (the API answers 201 Created then).
        """
        meta = body["metadata"]
        response = await patch(meta["name"], meta["namespace"], body, field_manager=OPERATOR_FIELD_MANAGER,
                               force=True, _content_type="application/apply-patch+yaml", _preload_content=False)
        return await read_json(response), response.status == 201

    async def _read_statefulset(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await read_json(await self._apps.read_namespaced_stateful_set(name, namespace,
                                                                                 _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise kopf.TemporaryError(f"Reading StatefulSet {namespace}/{name} failed: {_api_message(exc)}",
                                      delay=2) from exc

    async def _read_compute(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise kopf.TemporaryError(f"Reading Compute {namespace}/{name} failed: {_api_message(exc)}",
                                      delay=2) from exc

    def _event(self, compute: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a core v1 Event on the Compute (kopf sends it in the background; off if posting is off)."""
        kopf.event(dict(compute), type=type_, reason=reason, message=message)

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


def _key(compute: Mapping[str, Any]) -> Key:
    meta = compute["metadata"]
    return meta["namespace"], meta["name"]


def _controller_owner(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP):
            return ref
    return None


def _api_message(exc: ApiException) -> str:
    """The API's own explanation of an error (its Status message), else the HTTP reason."""
    message = (status_body(exc) or {}).get("message")
    return f"{exc.status} {message or exc.reason}"
