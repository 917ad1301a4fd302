"""The ``Compute`` custom resource (``compute.skytorch.dev/v1alpha1``).

One model shared by the client, the backends and the operator. Field names are
those of the upstream CRD (camelCase on the wire, snake_case here); anything
the model does not know is kept in ``extra`` so that a round trip loses nothing.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

GROUP = "compute.skytorch.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Compute"
PLURAL = "computes"
SINGULAR = "compute"

#: Field manager of the Python client's server-side apply.
CLIENT_FIELD_MANAGER = "skytorch-python-client"
#: Field manager of the operator's server-side apply.
OPERATOR_FIELD_MANAGER = "skytorch-operator"

#: Default gRPC port of a Compute's tensor server.
DEFAULT_PORT = 50051
#: Cluster DNS domain of in-cluster Service names, unless configured otherwise.
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

#: Condition types.
READY = "Ready"
SUSPENDED = "Suspended"

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid Compute name, else raise ``ValueError``.

    A Compute name is an RFC 1035 label: lowercase letters, digits and ``-``,
    starting with a letter, not ending with ``-``, at most 63 characters.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Compute name must be a non-empty string, got {name!r}")
    if len(name) > 63:
        raise ValueError(f"Compute name {name!r} is {len(name)} characters long; at most 63 are allowed")
    if not _NAME_RE.match(name):
        raise ValueError(
            f"Compute name {name!r} is not an RFC 1035 label: use lowercase letters, digits and '-', "
            "start with a letter and end with a letter or digit"
        )
    return name


def service_hostname(name: str, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
    """The in-cluster DNS name of a Compute's Service (the operator names it like the Compute)."""
    return f"{name}.{namespace}.svc.{cluster_domain.strip('.')}"


def now_rfc3339() -> str:
    """The current UTC time as Kubernetes writes it (``2024-01-02T03:04:05Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> _dt.datetime | None:
    """Parse a Kubernetes timestamp (string or datetime) into an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)


@dataclass
class Condition:
    """One entry of ``status.conditions`` (a ``metav1.Condition``)."""

    type: str
    status: str = "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None

    @property
    def is_true(self) -> bool:
        """Whether ``status`` is ``"True"``."""
        return self.status == "True"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Condition":
        """Build from the wire form."""
        return cls(
            type=str(data.get("type", "")),
            status=str(data.get("status", "Unknown")),
            reason=str(data.get("reason") or ""),
            message=str(data.get("message") or ""),
            last_transition_time=data.get("lastTransitionTime"),
            observed_generation=data.get("observedGeneration"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form (all fields the CRD requires are present)."""
        out: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason or "Unknown",
            "message": self.message,
            "lastTransitionTime": self.last_transition_time or now_rfc3339(),
        }
        if self.observed_generation is not None:
            out["observedGeneration"] = self.observed_generation
        return out


@dataclass
class ObjectMeta:
    """The parts of ``metadata`` SkyTorch reads."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ObjectMeta":
        """Build from the wire form."""
        return cls(
            name=str(data.get("name", "")),
            namespace=data.get("namespace"),
            labels=dict(data.get("labels") or {}),
            annotations=dict(data.get("annotations") or {}),
            uid=data.get("uid"),
            resource_version=data.get("resourceVersion"),
            generation=data.get("generation"),
            creation_timestamp=data.get("creationTimestamp"),
            deletion_timestamp=data.get("deletionTimestamp"),
        )


@dataclass
class ComputeSpec:
    """``spec`` of a Compute. ``env`` is a list of ``EnvVar`` dicts, as on the wire."""

    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[dict[str, Any]] | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    suspend: bool = False
    resources: dict[str, Any] | None = None
    override: dict[str, Any] | None = None
    volume_claim_templates: list[dict[str, Any]] | None = None

    _WIRE = {
        "image": "image",
        "command": "command",
        "args": "args",
        "env": "env",
        "labels": "labels",
        "annotations": "annotations",
        "suspend": "suspend",
        "resources": "resources",
        "override": "override",
        "volume_claim_templates": "volumeClaimTemplates",
    }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ComputeSpec":
        """Build from the wire form."""
        data = data or {}
        kwargs = {attr: data.get(wire) for attr, wire in cls._WIRE.items() if wire in data}
        kwargs["suspend"] = bool(data.get("suspend", False))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: only the fields that are set (``suspend`` always)."""
        out: dict[str, Any] = {}
        for attr, wire in self._WIRE.items():
            value = getattr(self, attr)
            if attr == "suspend":
                out[wire] = bool(value)
            elif value is not None:
                out[wire] = value
        return out

    def env_dict(self) -> dict[str, str]:
        """``env`` as a plain ``{name: value}`` mapping (entries with ``valueFrom`` are skipped)."""
        return {e["name"]: str(e.get("value", "")) for e in (self.env or []) if "valueFrom" not in e}


@dataclass
class ComputeStatus:
    """``status`` of a Compute."""

    conditions: list[Condition] = field(default_factory=list)
    addresses: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ComputeStatus":
        """Build from the wire form."""
        data = data or {}
        return cls(
            conditions=[Condition.from_dict(c) for c in data.get("conditions") or []],
            addresses=[dict(a) for a in data.get("addresses") or []],
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form."""
        out: dict[str, Any] = {}
        if self.conditions:
            out["conditions"] = [c.to_dict() for c in self.conditions]
        if self.addresses:
            out["addresses"] = self.addresses
        return out

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass
class ComputeResource:
    """A whole Compute object as read from (or written to) the API."""

    metadata: ObjectMeta
    spec: ComputeSpec = field(default_factory=ComputeSpec)
    status: ComputeStatus = field(default_factory=ComputeStatus)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ComputeResource":
        """Build from the wire form (a dict as the API returns it)."""
        return cls(
            metadata=ObjectMeta.from_dict(data.get("metadata") or {}),
            spec=ComputeSpec.from_dict(data.get("spec")),
            status=ComputeStatus.from_dict(data.get("status")),
        )

    def condition(self, type_: str) -> Condition | None:
        """The status condition of that type, if present."""
        return self.status.condition(type_)

    @property
    def is_ready(self) -> bool:
        """Whether the ``Ready`` condition is ``True``."""
        cond = self.condition(READY)
        return bool(cond and cond.is_true)

    @property
    def is_suspended(self) -> bool:
        """Whether the ``Suspended`` condition is ``True`` (or, before any status, ``spec.suspend``)."""
        cond = self.condition(SUSPENDED)
        return cond.is_true if cond else self.spec.suspend

    def describe_conditions(self) -> str:
        """A one-line summary of the conditions, for error messages."""
        if not self.status.conditions:
            return "no conditions reported yet"
        return "; ".join(
            f"{c.type}={c.status}" + (f" ({c.reason}: {c.message})" if c.reason or c.message else "")
            for c in self.status.conditions
        )


def env_list(env: Mapping[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Turn ``{"K": "V"}`` into the CRD's ``[{"name": "K", "value": "V"}]`` (lists pass through)."""
    if env is None:
        return None
    if isinstance(env, Mapping):
        return [{"name": str(k), "value": str(v)} for k, v in env.items()]
    return [dict(e) for e in env]


def apply_manifest(name: str, namespace: str, spec: ComputeSpec, *, labels: Mapping[str, str] | None = None,
                   annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The body of a server-side apply of a Compute.

    ``labels``/``annotations`` go on the Compute's own metadata; ``spec.labels``
    and ``spec.annotations`` are those the operator puts on the pod. The body
    always holds ``spec.suspend``, so ``spec`` has at least one property as
    the CRD requires.
    """
    metadata: dict[str, Any] = {"name": validate_name(name), "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec.to_dict()}
