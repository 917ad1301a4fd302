"""The Compute custom resource model, shared by the client, the backends and the operator."""

from skytorch.resources.compute import (
    API_VERSION,
    CLIENT_FIELD_MANAGER,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_PORT,
    GROUP,
    KIND,
    OPERATOR_FIELD_MANAGER,
    PLURAL,
    READY,
    SINGULAR,
    SUSPENDED,
    VERSION,
    ComputeResource,
    ComputeSpec,
    ComputeStatus,
    Condition,
    ObjectMeta,
    apply_manifest,
    env_list,
    now_rfc3339,
    parse_time,
    service_hostname,
    validate_name,
)

__all__ = [
    "API_VERSION", "CLIENT_FIELD_MANAGER", "DEFAULT_CLUSTER_DOMAIN", "DEFAULT_PORT", "GROUP", "KIND", "OPERATOR_FIELD_MANAGER",
    "PLURAL", "READY", "SINGULAR", "SUSPENDED", "VERSION", "ComputeResource", "ComputeSpec",
    "ComputeStatus", "Condition", "ObjectMeta", "apply_manifest", "env_list", "now_rfc3339",
    "parse_time", "service_hostname", "validate_name",
]
