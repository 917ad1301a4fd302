#!/usr/bin/env python3
"""Generate ``compute.skytorch.dev_computes.yaml``, the Compute CustomResourceDefinition.

The Compute's own fields are written out here; the Kubernetes types it embeds
(EnvVar, Affinity, Toleration, Volume, VolumeMount, PersistentVolumeClaimSpec,
...) are taken from the Kubernetes OpenAPI definitions that the
``kubernetes-validate`` package ships, and turned into a structural schema (no
``$ref``, single types, ``x-kubernetes-int-or-string`` for quantities), the way
controller-gen does from Go types. That keeps the same fields, types and
validation as the upstream SkyTorch CRD without copying it.

Usage (from the repository root, with the test extras installed)::

    python deploy/crds/generate.py > deploy/crds/compute.skytorch.dev_computes.yaml
    python deploy/crds/generate.py --check    # exit 1 if the committed file is stale

The Kubernetes version of the embedded types is pinned by ``K8S_VERSION``.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
from typing import Any

import yaml

from skytorch.resources import GROUP, KIND, PLURAL, SINGULAR, VERSION  # the names the client and operator use

K8S_VERSION = "1.37.0"
HERE = pathlib.Path(__file__).resolve().parent
OUTPUT = HERE / "compute.skytorch.dev_computes.yaml"

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_KEEP = ("description", "required", "enum", "format", "default", "minimum", "maximum", "minLength", "maxLength",
         "pattern", "minItems", "maxItems", "minProperties", "maxProperties")


def _definitions() -> dict[str, Any]:
    import kubernetes_validate  # the test extra: real Kubernetes JSON schemas

    path = (pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
            / f"v{K8S_VERSION}-local" / "_definitions.json")
    return json.loads(path.read_text())["$defs"]


class _Structural:
    """Turns Kubernetes JSON-schema definitions into structural OpenAPI v3 schemas."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def ref(self, name: str, description: str | None = None) -> dict[str, Any]:
        """The structural schema of definition ``name``."""
        return self.convert({"$ref": f"#/$defs/{name}", **({"description": description} if description else {})})

    def convert(self, node: dict[str, Any], stack: tuple[str, ...] = ()) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name == QUANTITY:
                out = {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_PATTERN,
                       "x-kubernetes-int-or-string": True}
            elif name == INT_OR_STRING:
                out = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
            elif name == OBJECT_META:  # embedded metadata: the fields a template may set
                out = _embedded_metadata()
            elif name in stack:  # recursive type: keep it open rather than infinite
                out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            else:
                out = self.convert(self.defs[name], stack + (name,))
            if node.get("description"):
                out = {"description": node["description"], **{k: v for k, v in out.items() if k != "description"}}
            return out
        out: dict[str, Any] = {k: copy.deepcopy(node[k]) for k in _KEEP if k in node}
        if "required" in out:
            out["required"] = sorted(out["required"])
        types = node.get("type")
        if isinstance(types, list):
            types = next((t for t in types if t != "null"), None)
        if types:
            out["type"] = "number" if types == "number" and node.get("format") == "double" else types
        if isinstance(out.get("enum"), list):
            out["enum"] = [e for e in out["enum"] if e is not None]
        for key, value in node.items():
            if key.startswith("x-kubernetes-"):
                out[key] = copy.deepcopy(value)
        if "properties" in node:
            out["properties"] = {k: self.convert(v, stack) for k, v in sorted(node["properties"].items())}
        if "items" in node:
            out["items"] = self.convert(node["items"], stack)
        if isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = self.convert(node["additionalProperties"], stack)
        return out


def _embedded_metadata() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "finalizers": {"type": "array", "items": {"type": "string"}},
        },
    }


def _string_map(description: str) -> dict[str, Any]:
    return {"description": description, "type": "object", "additionalProperties": {"type": "string"}}


def _string_list(description: str) -> dict[str, Any]:
    return {"description": description, "type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "atomic"}


def _list_map(description: str, items: dict[str, Any], key: str = "name") -> dict[str, Any]:
    return {"description": description, "type": "array", "items": items,
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


def _container_override(s: _Structural, which: str) -> dict[str, Any]:
    return _list_map(
        f"{which} overrides, matched by name ('server' is the Compute's container).",
        {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"description": "name of the container to override.", "type": "string", "minLength": 1},
                "env": _list_map("env variables added to the container.", s.ref("io.k8s.api.core.v1.EnvVar")),
                "volumeMounts": _list_map("volume mounts added to the container.",
                                          s.ref("io.k8s.api.core.v1.VolumeMount")),
            },
        },
    )


def spec_schema(s: _Structural) -> dict[str, Any]:
    """``spec`` of a Compute."""
    return {
        "description": "spec of the Compute.",
        "type": "object",
        "minProperties": 1,
        "properties": {
            "image": {"description": "image is the container image of the Compute's tensor server.", "type": "string"},
            "command": _string_list("command is the entrypoint of the Compute's server container."),
            "args": _string_list("args are the arguments to the entrypoint."),
            "env": _list_map("env is the list of environment variables of the Compute's server.",
                             s.ref("io.k8s.api.core.v1.EnvVar")),
            "labels": _string_map("labels put on the Compute's resources (the StatefulSet and its pod)."),
            "annotations": _string_map("annotations put on the Compute's resources (the StatefulSet and its pod)."),
            "suspend": {"description": "suspend scales the Compute to zero replicas while true.",
                        "type": "boolean", "default": False},
            "resources": {
                "description": "resources requested (and limited to) for the Compute's server, e.g. cpu, memory, "
                               "nvidia.com/gpu.",
                "type": "object",
                "additionalProperties": s.ref(QUANTITY),
            },
            "override": {
                "description": "override is applied to the pod template of the Compute.",
                "type": "object",
                "properties": {
                    "affinity": s.ref("io.k8s.api.core.v1.Affinity", "affinity of the Compute's pod."),
                    "containers": _container_override(s, "containers"),
                    "initContainers": _container_override(s, "initContainers"),
                    "imagePullSecrets": _list_map("imagePullSecrets of the Compute's pod.",
                                                  _image_pull_secret()),
                    "nodeSelector": _string_map("nodeSelector of the Compute's pod."),
                    "schedulingGates": _list_map("schedulingGates of the Compute's pod.",
                                                 s.ref("io.k8s.api.core.v1.PodSchedulingGate")),
                    "serviceAccountName": {"description": "serviceAccountName of the Compute's pod.", "type": "string"},
                    "tolerations": {"description": "tolerations of the Compute's pod.", "type": "array",
                                    "items": s.ref("io.k8s.api.core.v1.Toleration"),
                                    "x-kubernetes-list-type": "atomic"},
                    "volumes": _list_map("volumes of the Compute's pod.", s.ref("io.k8s.api.core.v1.Volume")),
                },
            },
            "volumeClaimTemplates": {
                "description": "volumeClaimTemplates of the Compute's StatefulSet.",
                "type": "array",
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "metadata": {"description": "metadata of the claim (its name is what volumeMounts refer to).",
                                     **_embedded_metadata()},
                        "spec": s.ref("io.k8s.api.core.v1.PersistentVolumeClaimSpec", "spec of the claim."),
                    },
                },
            },
        },
    }


def _image_pull_secret() -> dict[str, Any]:
    return {"type": "object", "x-kubernetes-map-type": "atomic",
            "properties": {"name": {"description": "name of the Secret.", "type": "string", "default": ""}}}


def status_schema() -> dict[str, Any]:
    """``status`` of a Compute: ``metav1.Condition`` entries and addresses."""
    condition = {
        "type": "object",
        "required": ["lastTransitionTime", "message", "reason", "status", "type"],
        "properties": {
            "type": {"description": "type of the condition (Ready, Suspended).", "type": "string", "maxLength": 316,
                     "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                                r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"},
            "status": {"description": "status of the condition.", "type": "string",
                       "enum": ["True", "False", "Unknown"]},
            "reason": {"description": "reason of the last transition, in CamelCase.", "type": "string",
                       "minLength": 1, "maxLength": 1024, "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
            "message": {"description": "message for people about the transition.", "type": "string",
                        "maxLength": 32768},
            "lastTransitionTime": {"description": "when the status last changed.", "type": "string",
                                   "format": "date-time"},
            "observedGeneration": {"description": "metadata.generation the condition was set from.",
                                   "type": "integer", "format": "int64", "minimum": 0},
        },
    }
    address = {
        "type": "object",
        "required": ["value"],
        "properties": {
            "type": {"description": "type of the address.", "type": "string", "default": "Hostname",
                     "enum": ["IPAddress", "Hostname"]},
            "value": {"description": "the address.", "type": "string", "minLength": 1, "maxLength": 253},
        },
    }
    return {
        "description": "status of the Compute, written by the operator.",
        "type": "object",
        "minProperties": 1,
        "properties": {
            "conditions": _list_map("conditions of the Compute.", condition, key="type"),
            "addresses": {"description": "addresses where the Compute's tensor server can be reached.",
                          "type": "array", "maxItems": 16, "items": address, "x-kubernetes-list-type": "atomic"},
        },
    }


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition."""
    s = _Structural(_definitions())
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "skytorch"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "State", "type": "string",
                     "jsonPath": '.status.conditions[?(@.status=="True")].type'},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "description": "A Compute is PyTorch compute (a tensor server) created from a notebook.",
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(s),
                        "status": status_schema(),
                    },
                    "x-kubernetes-validations": [
                        {"rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                         "message": "metadata.name must match RFC 1035 DNS label format"},
                        {"rule": "size(self.metadata.name) <= 63",
                         "message": "metadata.name must be no more than 63 characters"},
                    ],
                }},
            }],
        },
    }


def render() -> str:
    """The CRD as the YAML file holds it."""
    header = "# Generated by deploy/crds/generate.py -- edit that file, not this one.\n---\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    """Print the CRD, or with ``--check`` compare it with the committed file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed CRD differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text() != text:
            sys.stderr.write(f"{OUTPUT} is stale: run python deploy/crds/generate.py > {OUTPUT}\n")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
