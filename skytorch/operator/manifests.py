"""Pure functions that turn a Compute into the manifests the operator applies.

No I/O here: each builder takes the Compute as a plain dict (as the API returns
it) and returns a plain dict, ready for a server-side apply. A spec that the
API accepted but that cannot become a valid StatefulSet raises
:class:`InvalidComputeSpec`, naming the field and the problem, before anything
is sent.
"""

from __future__ import annotations

import decimal
import re
from typing import Any, Mapping

from skytorch.errors import ComputeError
from skytorch.operator.settings import OperatorConfig
from skytorch.resources import API_VERSION, DEFAULT_PORT, KIND, OPERATOR_FIELD_MANAGER

#: The one container of a Compute's pod.
CONTAINER_NAME = "server"
#: Name of the gRPC port (container and Service).
PORT_NAME = "grpc"

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
SERVER_NAME = "skytorch-server"

_QUANTITY_RE = re.compile(
    r"^(?P<sign>[+-])?(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
)
_SUFFIX = {
    "": decimal.Decimal(1), "n": decimal.Decimal("1e-9"), "u": decimal.Decimal("1e-6"),
    "m": decimal.Decimal("1e-3"), "k": decimal.Decimal("1e3"), "M": decimal.Decimal("1e6"),
    "G": decimal.Decimal("1e9"), "T": decimal.Decimal("1e12"), "P": decimal.Decimal("1e15"),
    "E": decimal.Decimal("1e18"), "Ki": decimal.Decimal(2**10), "Mi": decimal.Decimal(2**20),
    "Gi": decimal.Decimal(2**30), "Ti": decimal.Decimal(2**40), "Pi": decimal.Decimal(2**50),
    "Ei": decimal.Decimal(2**60),
}
_STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
_QUALIFIED_NAME_RE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                                r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class InvalidComputeSpec(ComputeError):
    """A Compute's spec was accepted by the API but cannot be turned into a StatefulSet.

    ``reason`` is a CamelCase reason for the Warning event and the ``Ready``
    condition; the message names the field and the problem.
    """

    def __init__(self, message: str, *, compute: str | None = None, reason: str = "InvalidSpec") -> None:
        super().__init__(message, compute=compute)
        self.reason = reason


def parse_quantity(value: object) -> decimal.Decimal:
    """Parse a Kubernetes quantity (``"500m"``, ``"2Gi"``, ``4``) into a Decimal; ``ValueError`` if malformed."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a quantity")
    match = _QUANTITY_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity (examples: 500m, 2, 4Gi)")
    number = decimal.Decimal(match["num"])
    suffix = match["suffix"] or ""
    if suffix[:1] in ("e", "E"):
        number *= decimal.Decimal(10) ** decimal.Decimal(suffix[1:])
    else:
        number *= _SUFFIX[suffix]
    return -number if match["sign"] == "-" else number


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select a Compute's pod (the StatefulSet's immutable selector)."""
    return {NAME_LABEL: SERVER_NAME, INSTANCE_LABEL: name}


def resource_labels(compute: Mapping[str, Any]) -> dict[str, str]:
    """Labels of the StatefulSet, Service and pod: the spec's, then SkyTorch's (which win)."""
    name = compute["metadata"]["name"]
    labels = dict((compute.get("spec") or {}).get("labels") or {})
    labels.update(selector_labels(name))
    labels.update({MANAGED_BY_LABEL: OPERATOR_FIELD_MANAGER, "app.kubernetes.io/component": "compute",
                   "app.kubernetes.io/part-of": "skytorch"})
    return labels


def owner_reference(compute: Mapping[str, Any]) -> dict[str, Any]:
    """The ownerReference that ties a child to its Compute (deleting the Compute deletes it)."""
    meta = compute["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def service(compute: Mapping[str, Any]) -> dict[str, Any]:
    """The Service named like the Compute: port 50051 named ``grpc``, selecting its pod."""
    meta = compute["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": resource_labels(compute),
            "ownerReferences": [owner_reference(compute)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(meta["name"]),
            "ports": [{"name": PORT_NAME, "port": DEFAULT_PORT, "targetPort": PORT_NAME, "protocol": "TCP",
                       "appProtocol": "grpc"}],
        },
    }


def statefulset(compute: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The StatefulSet named like the Compute: one ``server`` container, 1 replica (0 when suspended).

    Raises :class:`InvalidComputeSpec` if the spec cannot be honoured.
    """
    meta = compute["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = compute.get("spec") or {}
    check = _Checker(f"{namespace}/{name}")

    image = spec.get("image", None)
    if image is None:
        image = config.server_image
    elif not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise check.fail("spec.image", f"{image!r} is not a container image reference; set an image or leave "
                         "the field out to use the operator's default", reason="InvalidImage")

    check.labels("spec.labels", spec.get("labels"))
    labels = resource_labels(compute)
    annotations = check.string_map("spec.annotations", spec.get("annotations"))
    override = check.mapping("spec.override", spec.get("override"))

    env = [{"name": "SKYTORCH_HOST", "value": "0.0.0.0"}, {"name": "SKYTORCH_PORT", "value": str(DEFAULT_PORT)}]
    env = _merge_by_name(env, check.named_list("spec.env", spec.get("env")))

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "ports": [{"name": PORT_NAME, "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "grpc": {"port": DEFAULT_PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }
    for field in ("command", "args"):
        if spec.get(field) is not None:
            container[field] = check.string_list(f"spec.{field}", spec[field])
    resources = check.resources("spec.resources", spec.get("resources"))
    if resources:
        container["resources"] = {"requests": dict(resources), "limits": dict(resources)}

    claims = check.list_of_mappings("spec.volumeClaimTemplates", spec.get("volumeClaimTemplates"))
    claim_names = []
    for i, claim in enumerate(claims):
        claim_name = ((claim.get("metadata") or {}).get("name"))
        if not isinstance(claim_name, str) or not _DNS_SUBDOMAIN_RE.match(claim_name):
            raise check.fail(f"spec.volumeClaimTemplates[{i}].metadata.name",
                             f"{claim_name!r} must be a DNS subdomain name")
        claim_names.append(claim_name)

    pod_spec: dict[str, Any] = {"containers": [container]}
    volumes = check.named_list("spec.override.volumes", override.get("volumes"))
    if volumes:
        pod_spec["volumes"] = volumes
    volume_names = {v["name"] for v in volumes} | set(claim_names)

    for i, item in enumerate(check.named_list("spec.override.containers", override.get("containers"))):
        if item["name"] != CONTAINER_NAME:
            raise check.fail(f"spec.override.containers[{i}].name", f"{item['name']!r} matches no container; "
                             f"a Compute's pod has one container, {CONTAINER_NAME!r}")
        extra_env = check.named_list(f"spec.override.containers[{i}].env", item.get("env"))
        container["env"] = _merge_by_name(env, extra_env)
        mounts = check.named_list(f"spec.override.containers[{i}].volumeMounts", item.get("volumeMounts"))
        for j, mount in enumerate(mounts):
            if mount["name"] not in volume_names:
                raise check.fail(f"spec.override.containers[{i}].volumeMounts[{j}]",
                                 f"mounts volume {mount['name']!r}, which is neither in spec.override.volumes "
                                 "nor in spec.volumeClaimTemplates")
            if not isinstance(mount.get("mountPath"), str) or not mount["mountPath"].startswith("/"):
                raise check.fail(f"spec.override.containers[{i}].volumeMounts[{j}].mountPath",
                                 f"must be an absolute path, got {mount.get('mountPath')!r}")
        if mounts:
            container["volumeMounts"] = mounts
    container.setdefault("env", env)
    init_overrides = check.named_list("spec.override.initContainers", override.get("initContainers"))
    if init_overrides:
        raise check.fail("spec.override.initContainers", f"names {init_overrides[0]['name']!r}, but a "
                         "Compute's pod has no init containers")

    pod_overrides = (("nodeSelector", check.string_map), ("tolerations", check.list_of_mappings),
                     ("affinity", check.mapping), ("imagePullSecrets", check.named_list),
                     ("schedulingGates", check.named_list))
    for field, checked in pod_overrides:
        value = checked(f"spec.override.{field}", override.get(field))
        if value:
            pod_spec[field] = value
    account = override.get("serviceAccountName")
    if account is not None:
        if not isinstance(account, str) or not _DNS_SUBDOMAIN_RE.match(account):
            raise check.fail("spec.override.serviceAccountName", f"{account!r} is not a valid ServiceAccount name")
        pod_spec["serviceAccountName"] = account

    template_meta: dict[str, Any] = {"labels": labels}
    if annotations:
        template_meta["annotations"] = annotations
    sts_meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels,
                                "ownerReferences": [owner_reference(compute)]}
    if annotations:
        sts_meta["annotations"] = annotations
    sts_spec: dict[str, Any] = {
        "replicas": 0 if spec.get("suspend") else 1,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector_labels(name)},
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if claims:
        sts_spec["volumeClaimTemplates"] = [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim} for claim in claims
        ]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": sts_meta, "spec": sts_spec}


def _merge_by_name(base: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``base`` with ``extra`` entries replacing those of the same name (order kept, no duplicates)."""
    merged = {item["name"]: item for item in base}
    merged.update({item["name"]: item for item in extra})
    return list(merged.values())


class _Checker:
    """Shape checks with messages that name the Compute and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str, reason: str = "InvalidSpec") -> InvalidComputeSpec:
        """The error for ``field`` (an override field gets reason InvalidOverride)."""
        if field.startswith("spec.override"):
            reason = "InvalidOverride"
        return InvalidComputeSpec(f"Compute {self.where}: {field} {problem}", compute=self.where, reason=reason)

    def mapping(self, field: str, value: object) -> dict[str, Any]:
        """``value`` as a dict (``{}`` if unset); it must be an object."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be an object, got {type(value).__name__}")
        return dict(value)

    def string_map(self, field: str, value: object) -> dict[str, str]:
        """An object whose values are all strings."""
        mapping = self.mapping(field, value)
        for key, item in mapping.items():
            if not isinstance(item, str):
                raise self.fail(f"{field}.{key}", f"must be a string, got {item!r}")
        return mapping

    def labels(self, field: str, value: object) -> dict[str, str]:
        """Labels the API accepts on a pod: qualified-name keys, short label values."""
        mapping = self.string_map(field, value)
        for key, item in mapping.items():
            if len(key) > 316 or not _QUALIFIED_NAME_RE.match(key):
                raise self.fail(field, f"key {key!r} is not a valid label key")
            if len(item) > 63 or not _LABEL_VALUE_RE.match(item):
                raise self.fail(f"{field}.{key}", f"value {item!r} is not a valid label value "
                                "(at most 63 characters: letters, digits, '-', '_', '.')")
        return mapping

    def string_list(self, field: str, value: object) -> list[str]:
        """A list of strings."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(field, f"must be a list of strings, got {value!r}")
        return list(value)

    def list_of_mappings(self, field: str, value: object) -> list[dict[str, Any]]:
        """A list of objects (``[]`` if unset)."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise self.fail(f"{field}[{i}]", f"must be an object, got {item!r}")
        return [dict(item) for item in value]

    def named_list(self, field: str, value: object) -> list[dict[str, Any]]:
        """A list of objects with unique, non-empty ``name`` fields."""
        items = self.list_of_mappings(field, value)
        seen: set[str] = set()
        for i, item in enumerate(items):
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise self.fail(f"{field}[{i}].name", f"must be a non-empty string, got {name!r}")
            if name in seen:
                raise self.fail(field, f"has two entries named {name!r}")
            seen.add(name)
        return items

    def resources(self, field: str, value: object) -> dict[str, Any]:
        """Resource quantities a container accepts: known or qualified names, valid, non-negative."""
        mapping = self.mapping(field, value)
        for key, quantity in mapping.items():
            standard = key in _STANDARD_RESOURCES or key.startswith("hugepages-")
            if not standard and ("/" not in key or not _QUALIFIED_NAME_RE.match(key)):
                raise self.fail(f"{field}.{key}", "is not a resource name: use cpu, memory, ephemeral-storage, "
                                "hugepages-<size> or a domain-qualified name such as nvidia.com/gpu",
                                reason="InvalidResources")
            try:
                amount = parse_quantity(quantity)
            except ValueError as exc:
                raise self.fail(f"{field}.{key}", str(exc), reason="InvalidResources") from None
            if amount < 0:
                raise self.fail(f"{field}.{key}", f"must be at least 0, got {quantity!r}",
                                reason="InvalidResources")
            if not standard and amount != amount.to_integral_value():
                raise self.fail(f"{field}.{key}", f"must be a whole number for an extended resource, "
                                f"got {quantity!r}", reason="InvalidResources")
        return mapping
