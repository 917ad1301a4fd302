"""The resource types the emulator serves, and the discovery documents built from them.

Each :class:`ResourceType` says how its URLs look (group, version, plural,
namespaced), whether it has a ``status`` subresource (writes to the main
resource then leave ``status`` alone and ``/status`` writes change only
``status``), and which field selectors the real API accepts for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

#: Field selectors every type supports.
COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})

EVENT_FIELDS = frozenset({
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
    "reason", "reportingComponent", "source", "type",
})

POD_FIELDS = frozenset({
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
    "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
})

_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_RFC1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Validator = Callable[["ResourceType", dict[str, Any]], list[dict[str, str]]]


@dataclass
class ResourceType:
    """One served resource type (``group``/``version``/``plural``)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    extra_fields: frozenset[str] = frozenset()
    #: The openAPIV3Schema of a CRD version, used to validate objects when set.
    schema: dict[str, Any] | None = None
    validators: list[Validator] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, else ``group/version``."""
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def key(self) -> tuple[str, str]:
        """The storage key: objects are shared by every served version of a group/plural."""
        return (self.group, self.plural)

    @property
    def resource_name(self) -> str:
        """``plural.group`` (``plural`` for the core group), as the API writes it in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def selectable_fields(self) -> frozenset[str]:
        """Field selectors the API accepts for this type."""
        return COMMON_FIELDS | self.extra_fields

    def validate(self, obj: dict[str, Any]) -> list[dict[str, str]]:
        """Field errors of ``obj`` (``[]`` when valid), as ``{field, message}`` causes."""
        causes: list[dict[str, str]] = []
        name = (obj.get("metadata") or {}).get("name") or ""
        if name and (len(name) > 253 or not _RFC1123_SUBDOMAIN.match(name)):
            causes.append({"field": "metadata.name", "message": (
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")})
        for validator in self.validators:
            causes.extend(validator(self, obj))
        if self.schema is not None:
            causes.extend(_schema_causes(self.schema, obj))
        return causes


def prune_and_default(schema: dict[str, Any], value: Any, *, root: bool = True) -> Any:
    """Drop fields a structural schema does not know and fill in its defaults, as the API does for CRDs.

    ``x-kubernetes-preserve-unknown-fields`` keeps a subtree as it is; ``metadata``
    at the root is left to the server.
    """
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                out[key] = item
            elif props is not None and key in props:
                out[key] = prune_and_default(props[key], item, root=False)
            elif isinstance(extra, dict):
                out[key] = prune_and_default(extra, item, root=False)
            elif schema.get("x-kubernetes-preserve-unknown-fields") or extra is True or props is None:
                out[key] = item
        for key, sub in (props or {}).items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_and_default(schema["items"], item, root=False) for item in value]
    return value


def _schema_causes(schema: dict[str, Any], obj: dict[str, Any]) -> list[dict[str, str]]:
    """Validate ``obj`` (without metadata) against a CRD's openAPIV3Schema with jsonschema."""
    import jsonschema

    body = {k: v for k, v in obj.items() if k != "metadata"}
    sub = {k: v for k, v in schema.items() if k != "properties"}
    sub["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}
    validator = jsonschema.Draft7Validator(sub)
    causes = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path) or "<root>"
        causes.append({"field": path, "message": f"Invalid value: {error.message}"})
    return causes


def validate_compute(rtype: ResourceType, obj: dict[str, Any]) -> list[dict[str, str]]:
    """The Compute CRD's own rules: RFC 1035 name of at most 63 characters, ``spec`` with a property."""
    causes: list[dict[str, str]] = []
    name = (obj.get("metadata") or {}).get("name") or ""
    if name and not _RFC1035.match(name):
        causes.append({"field": "<nil>", "message": 'Invalid value: "object": metadata.name must match RFC 1035 DNS label format'})
    if len(name) > 63:
        causes.append({"field": "<nil>", "message": 'Invalid value: "object": metadata.name must be no more than 63 characters'})
    spec = obj.get("spec")
    if spec is None or (isinstance(spec, dict) and len(spec) < 1):
        causes.append({"field": "spec", "message": "Invalid value: 0: spec in body should have at least 1 properties"})
    elif not isinstance(spec, dict):
        causes.append({"field": "spec", "message": f'Invalid value: "{type(spec).__name__}": spec in body must be of type object'})
    return causes


def builtin_types() -> list[ResourceType]:
    """The types served from the start."""
    return [
        ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, singular="namespace",
                     status_subresource=True, short_names=("ns",), extra_fields=frozenset({"status.phase"})),
        ResourceType("", "v1", "pods", "Pod", singular="pod", status_subresource=True, short_names=("po",),
                     extra_fields=POD_FIELDS),
        ResourceType("", "v1", "services", "Service", singular="service", status_subresource=True,
                     short_names=("svc",)),
        ResourceType("", "v1", "events", "Event", singular="event", short_names=("ev",), extra_fields=EVENT_FIELDS),
        ResourceType("", "v1", "configmaps", "ConfigMap", singular="configmap", short_names=("cm",)),
        ResourceType("", "v1", "secrets", "Secret", singular="secret", extra_fields=frozenset({"type"})),
        ResourceType("", "v1", "serviceaccounts", "ServiceAccount", singular="serviceaccount", short_names=("sa",)),
        ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", singular="persistentvolumeclaim",
                     status_subresource=True, short_names=("pvc",)),
        ResourceType("apps", "v1", "statefulsets", "StatefulSet", singular="statefulset", status_subresource=True,
                     short_names=("sts",)),
        ResourceType("apps", "v1", "deployments", "Deployment", singular="deployment", status_subresource=True,
                     short_names=("deploy",)),
        ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                     namespaced=False, singular="customresourcedefinition", status_subresource=True,
                     short_names=("crd", "crds")),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", singular="lease"),
        ResourceType("compute.skytorch.dev", "v1alpha1", "computes", "Compute", singular="compute",
                     status_subresource=True, validators=[validate_compute]),
    ]


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition declares (one per served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        schema = ((version.get("schema") or {}).get("openAPIV3Schema"))
        extra = frozenset(f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or [] if "jsonPath" in f)
        out.append(ResourceType(
            group=spec.get("group", ""), version=version.get("name", ""), plural=names.get("plural", ""),
            kind=names.get("kind", ""), namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular") or names.get("kind", "").lower(),
            status_subresource="status" in ((version.get("subresources") or {})),
            short_names=tuple(names.get("shortNames") or ()), extra_fields=extra, schema=schema,
        ))
    return out


def api_resource_list(group_version: str, types: list[ResourceType]) -> dict[str, Any]:
    """The discovery document of one group/version (``/api/v1``, ``/apis/<group>/<version>``)."""
    resources: list[dict[str, Any]] = []
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    for t in types:
        resources.append({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
                          "verbs": verbs, "shortNames": list(t.short_names)})
        if t.status_subresource:
            resources.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                              "kind": t.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}
