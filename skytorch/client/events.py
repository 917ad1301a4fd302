"""Kubernetes Events about a Compute: the default ``on_events`` callback and small helpers."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def _field(obj: Any, attr: str, key: str | None = None) -> Any:
    """Read ``attr`` from a model object, or ``key`` (camelCase) from a dict."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key or attr)
    return getattr(obj, attr, None)


def event_key(event: Any) -> tuple[Any, ...]:
    """Identity of one occurrence of an event (uid, resourceVersion and count), for de-duplication."""
    meta = _field(event, "metadata")
    return (
        _field(meta, "uid") or _field(meta, "name"),
        _field(meta, "resource_version", "resourceVersion"),
        _field(event, "count"),
    )


def log_event(event: Any) -> None:
    """Default ``on_events`` callback: log one Kubernetes Event about a Compute.

    ``Normal`` events are logged at INFO, ``Warning`` at WARNING, anything else at
    ERROR, each with the event's reason, message and the object's name. Accepts
    ``V1Event``/``CoreV1Event`` objects (and their dict form).
    """
    type_ = _field(event, "type") or ""
    involved = _field(event, "involved_object", "involvedObject")
    name = _field(involved, "name") or "?"
    namespace = _field(involved, "namespace")
    kind = _field(involved, "kind") or "Compute"
    reason = _field(event, "reason") or ""
    message = _field(event, "message") or ""
    if type_ == "Normal":
        level = logging.INFO
    elif type_ == "Warning":
        level = logging.WARNING
    else:
        level = logging.ERROR
    target = f"{namespace}/{name}" if namespace else name
    logger.log(level, "%s %s: %s %s: %s", kind, target, type_ or "Event", reason, message)
