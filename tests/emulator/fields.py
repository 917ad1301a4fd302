"""Field paths, merges and ``managedFields`` bookkeeping for server-side apply.

A field path is a tuple of keys from the object's root to a leaf. Lists are
atomic (owned as a whole), which is how the API treats lists without a
``x-kubernetes-list-type: map``; that is precise enough for what SkyTorch and
kopf write.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

Path = tuple[str, ...]

#: Top-level metadata fields a client may own; everything else in metadata is the server's.
OWNABLE_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")


def leaf_paths(obj: Any, prefix: Path = ()) -> set[Path]:
    """Every leaf path of a JSON value (empty dicts and lists count as leaves)."""
    if isinstance(obj, dict) and obj:
        out: set[Path] = set()
        for key, value in obj.items():
            out |= leaf_paths(value, prefix + (str(key),))
        return out
    return {prefix} if prefix else set()


def owned_paths(obj: dict[str, Any], *, subresource: str | None, status_subresource: bool) -> set[Path]:
    """The paths a write of ``obj`` claims: spec-like content, ownable metadata, status where it belongs."""
    out: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if key == "metadata":
            for mkey in OWNABLE_METADATA:
                if mkey in (value or {}):
                    out |= leaf_paths(value[mkey], ("metadata", mkey))
            continue
        if status_subresource and (key == "status") != (subresource == "status"):
            continue
        out |= leaf_paths(value, (key,))
    return out


def get_path(obj: Any, path: Path) -> Any:
    """The value at ``path``, or ``_MISSING``."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def remove_path(obj: dict[str, Any], path: Path) -> None:
    """Remove the leaf at ``path`` and any dicts it leaves empty."""
    parents = []
    node: Any = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, key in reversed(parents):
        if parent[key] == {}:
            del parent[key]
        else:
            break


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into a copy of ``base``: dicts recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` removes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def paths_to_fields(paths: Iterable[Path]) -> dict[str, Any]:
    """Encode paths as ``fieldsV1`` (``{"f:spec": {"f:image": {}}}``)."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return root


def fields_to_paths(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    """Decode ``fieldsV1`` back into leaf paths."""
    out: set[Path] = set()
    for key, value in (fields or {}).items():
        if not key.startswith("f:"):
            continue
        path = prefix + (key[2:],)
        if value:
            out |= fields_to_paths(value, path)
        else:
            out.add(path)
    return out


def changed_paths(old: dict[str, Any], new: dict[str, Any], candidates: set[Path]) -> set[Path]:
    """Those ``candidates`` whose value differs between ``old`` and ``new``."""
    return {p for p in candidates if get_path(old, p) != get_path(new, p)}
