"""Pure functions computing a Compute's status from its spec and its StatefulSet.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` is always set
and kept while the condition's status does not change, so that writing the
same state twice changes nothing (and the operator writes only on change).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from skytorch.resources import READY, SUSPENDED, Condition, now_rfc3339

#: Reasons of the ``Ready`` condition.
STATEFULSET_READY = "StatefulSetReady"
STATEFULSET_NOT_READY = "StatefulSetNotReady"
STATEFULSET_NOT_AVAILABLE = "StatefulSetNotAvailable"
#: Reasons of the ``Suspended`` condition.
REASON_SUSPENDED = "Suspended"
REASON_RESUMED = "Resumed"


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why the operator could not honour a Compute's spec (a CamelCase reason and a message)."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Transition:
    """A condition that changed status: ``(type, new status, reason, message)``."""

    type: str
    status: str
    reason: str
    message: str


def ready_condition(statefulset: Mapping[str, Any] | None, failure: Failure | None = None) -> Condition:
    """``Ready`` from the StatefulSet's ready replicas (or the failure that stopped it).

    Ready replicas count only once the StatefulSet controller has observed the
    StatefulSet's current generation: right after a resume, a stale count from
    before the suspend must not make the Compute ready.
    """
    if failure is not None:
        return Condition(type=READY, status="False", reason=failure.reason, message=failure.message)
    if statefulset is None:
        return Condition(type=READY, status="False", reason=STATEFULSET_NOT_AVAILABLE,
                         message="StatefulSet is not available")
    replicas = int((statefulset.get("spec") or {}).get("replicas") or 0)
    sts_status = statefulset.get("status") or {}
    ready = int(sts_status.get("readyReplicas") or 0)
    generation = (statefulset.get("metadata") or {}).get("generation")
    observed = sts_status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        # The ready count is from before the last change (e.g. a resume): not to be trusted yet.
        return Condition(type=READY, status="False", reason=STATEFULSET_NOT_READY,
                         message=f"{ready}/{replicas} replicas ready (StatefulSet generation {generation} "
                                 "not yet rolled out)")
    if replicas > 0 and ready >= replicas:
        return Condition(type=READY, status="True", reason=STATEFULSET_READY,
                         message=f"{ready}/{replicas} replicas ready")
    return Condition(type=READY, status="False", reason=STATEFULSET_NOT_READY,
                     message=f"{ready}/{replicas} replicas ready" + (" (suspended)" if replicas == 0 else ""))


def suspended_condition(suspend: bool, previous: Condition | None) -> Condition | None:
    """``Suspended=True`` while suspended; ``False``/``Resumed`` once resumed; absent if never suspended."""
    if suspend:
        return Condition(type=SUSPENDED, status="True", reason=REASON_SUSPENDED,
                         message="Compute is suspended: scaled to 0 replicas")
    if previous is not None and (previous.is_true or previous.reason == REASON_RESUMED):
        return Condition(type=SUSPENDED, status="False", reason=REASON_RESUMED,
                         message="Compute is resumed: scaled to 1 replica")
    return previous


def merge_conditions(old: list[Condition], new: list[Condition], now: str | None = None,
                     generation: int | None = None) -> list[Condition]:
    """``old`` updated by ``new`` by type; a condition whose status is unchanged keeps its transition time.

    Order: ``old``'s types where they were, then the new types (a dict keeps insertion order).
    """
    now = now or now_rfc3339()
    by_type = {c.type: c for c in old}
    for cond in new:
        before = by_type.get(cond.type)
        keep_time = before is not None and before.status == cond.status and before.last_transition_time
        by_type[cond.type] = dataclasses.replace(
            cond,
            last_transition_time=before.last_transition_time if keep_time else now,  # type: ignore[union-attr]
            observed_generation=generation if generation is not None else cond.observed_generation,
        )
    return list(by_type.values())


def desired_status(compute: Mapping[str, Any], statefulset: Mapping[str, Any] | None, *,
                   failure: Failure | None, hostname: str, now: str | None = None) -> dict[str, Any]:
    """The whole ``status`` the Compute should have now (wire form)."""
    current = compute.get("status") or {}
    old = [Condition.from_dict(c) for c in current.get("conditions") or []]
    previous_suspended = next((c for c in old if c.type == SUSPENDED), None)
    suspend = bool((compute.get("spec") or {}).get("suspend"))
    new = [ready_condition(statefulset, failure)]
    suspended = suspended_condition(suspend, previous_suspended)
    if suspended is not None:
        new.append(suspended)
    generation = (compute.get("metadata") or {}).get("generation")
    conditions = merge_conditions(old, new, now=now, generation=generation)
    status = {k: v for k, v in current.items() if k not in ("conditions", "addresses")}
    status["conditions"] = [c.to_dict() for c in conditions]
    status["addresses"] = [{"type": "Hostname", "value": hostname}]
    return status


def transitions(old_status: Mapping[str, Any] | None, new_status: Mapping[str, Any]) -> list[Transition]:
    """The conditions whose status changed between two statuses (new ones count when True or Resumed)."""
    before = {c.get("type"): c for c in (old_status or {}).get("conditions") or []}
    out = []
    for cond in new_status.get("conditions") or []:
        prev = before.get(cond["type"])
        if prev is None:
            if cond["status"] != "True":
                continue
        elif prev.get("status") == cond["status"]:
            continue
        out.append(Transition(cond["type"], cond["status"], cond["reason"], cond["message"]))
    return out
