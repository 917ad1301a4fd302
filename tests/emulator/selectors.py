"""Label and field selectors as the API server parses them."""

from __future__ import annotations

import re
from typing import Any, Callable

from tests.emulator.errors import StatusError

Predicate = Callable[[dict[str, Any]], bool]

_SET_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms, depth, current = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


def label_selector(selector: str | None) -> Predicate:
    """A predicate over objects for a label selector (``a=b,c!=d,e in (f,g),!h,i``)."""
    if not selector:
        return lambda obj: True
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(selector):
        m = _SET_TERM.match(term)
        if m:
            key, op = m.group(2), m.group(3)
            values = {v.strip() for v in m.group(4).split(",") if v.strip()}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
            continue
        for op in ("!=", "==", "="):
            if op in term:
                key, value = (p.strip() for p in term.split(op, 1))
                if op == "!=":
                    checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
                else:
                    checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
                break
        else:
            if term.startswith("!"):
                checks.append(lambda labels, k=term[1:].strip(): k not in labels)
            elif re.match(r"^[A-Za-z0-9_./-]+$", term):
                checks.append(lambda labels, k=term: k in labels)
            else:
                raise StatusError(400, "BadRequest", f"unable to parse requirement: invalid label selector term {term!r}")

    def predicate(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def _field_value(obj: dict[str, Any], path: str) -> str:
    if path == "source":
        value: Any = (obj.get("source") or {}).get("component", "")
        return "" if value is None else str(value)
    value = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(selector: str | None, allowed: frozenset[str], kind: str) -> Predicate:
    """A predicate for a field selector; fields the API does not support for ``kind`` give a 400."""
    if not selector:
        return lambda obj: True
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_terms(selector):
        for op in ("!=", "==", "="):
            if op in term:
                path, value = (p.strip() for p in term.split(op, 1))
                break
        else:
            raise StatusError(400, "BadRequest", f"invalid field selector: {term!r}: expected key=value or key!=value")
        if path not in allowed:
            raise StatusError(400, "BadRequest", f'field label not supported: {path}', details={"kind": kind})
        if op == "!=":
            checks.append(lambda obj, p=path, v=value: _field_value(obj, p) != v)
        else:
            checks.append(lambda obj, p=path, v=value: _field_value(obj, p) == v)
    return lambda obj: all(check(obj) for check in checks)
