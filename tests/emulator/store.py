"""The emulator's object store: what the API server keeps, and the rules it keeps it by.

Every operation is synchronous and runs under one lock, so tests may read and
write the store from any thread (the fake operator does) while the HTTP
handlers run on the emulator's own loop. Watchers belong to an event loop and
are fed through ``call_soon_threadsafe``, in resourceVersion order.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime as dt
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import jsonpatch

from tests.emulator import fields as F
from tests.emulator.errors import StatusError
from tests.emulator.resources import ResourceType, builtin_types, prune_and_default, types_from_crd

Obj = dict[str, Any]
#: Server-side metadata a client cannot set or change.
SERVER_METADATA = ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp",
                   "deletionGracePeriodSeconds", "managedFields", "selfLink")

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def now() -> str:
    """The current UTC time as the API writes it."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gone(rv: int, oldest: int) -> StatusError:
    return StatusError(410, "Expired", f"too old resource version: {rv} ({oldest})")


@dataclass(eq=False)
class Watcher:
    """One open watch: a filter, the events waiting for its consumer, and how far it has seen.

    The store appends events under its lock and wakes the consumer's loop;
    ``seen_rv`` is the last resourceVersion the store has shown this watcher
    (matching or not), so a bookmark at ``seen_rv`` taken under the lock with no
    events waiting never skips one.
    """

    key: tuple[str, str]
    namespace: str | None
    predicate: Callable[[Obj], bool]
    loop: asyncio.AbstractEventLoop
    items: collections.deque = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    seen_rv: int = 0
    close_reason: str | None = None
    #: An in-process consumer (the fake operator), not an HTTP connection: not counted or dropped by test hooks.
    internal: bool = False

    @property
    def closed(self) -> bool:
        """Whether the watch has been told to end."""
        return self.close_reason is not None

    def translate(self, etype: str, new: Obj | None, old: Obj | None) -> tuple[str, Obj] | None:
        """The event this watcher sees for a change (``None`` when it does not concern it)."""
        obj = new if new is not None else old
        assert obj is not None
        if self.namespace and (obj.get("metadata") or {}).get("namespace") != self.namespace:
            return None
        if etype == "DELETED":
            return ("DELETED", obj) if self.predicate(obj) else None
        now_matches = new is not None and self.predicate(new)
        if etype == "ADDED":
            return ("ADDED", new) if now_matches else None  # type: ignore[return-value]
        was_matching = old is not None and self.predicate(old)
        if now_matches:
            return ("MODIFIED" if was_matching else "ADDED", new)  # type: ignore[return-value]
        if was_matching:
            return ("DELETED", new)  # type: ignore[return-value]
        return None

    def offer(self, etype: str, new: Obj | None, old: Obj | None, rv: int) -> None:
        """Queue the event for this watcher if it concerns it (called under the store lock)."""
        if self.closed:
            return
        self.seen_rv = rv
        event = self.translate(etype, new, old)
        if event is not None:
            self.items.append((event[0], copy.deepcopy(event[1])))
            self._wake()

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.wakeup.set)
        except RuntimeError:  # the consumer's loop is closed
            pass

    def close(self, reason: str = "closed") -> None:
        """Make the consumer end its stream (``reason``: ``"closed"`` cleanly, ``"drop"`` abruptly)."""
        if not self.closed:
            self.close_reason = reason
            self._wake()

    async def next(self, timeout: float | None = None) -> tuple[str, Obj | None] | None:
        """The next ``(type, object)``; ``(reason, None)`` once closed; ``None`` after ``timeout`` seconds idle."""
        while True:
            if self.close_reason is not None:
                return (self.close_reason, None)
            if self.items:
                return self.items.popleft()
            self.wakeup.clear()
            if self.items or self.close_reason is not None:
                continue
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return None


class Store:
    """Objects of every served type, one global resourceVersion counter and a bounded change history."""

    def __init__(self, *, history_limit: int = 1000, strict_namespaces: bool = False) -> None:
        self.lock = threading.RLock()
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = collections.defaultdict(dict)
        self.rv = 0
        self.history: collections.deque[tuple[int, tuple[str, str], str, Obj | None, Obj | None]] = collections.deque()
        self.history_limit = history_limit
        #: Watches from a resourceVersion below this one get ``410 Gone``.
        self.oldest_rv = 0
        self.watchers: set[Watcher] = set()
        self.strict_namespaces = strict_namespaces
        for rtype in builtin_types():
            self.add_type(rtype)
        for ns in ("default", "kube-system", "kube-public"):
            self._create_namespace(ns)

    # ----------------------------------------------------------------- types

    def add_type(self, rtype: ResourceType) -> None:
        """Serve a resource type (replacing one of the same group/version/plural)."""
        with self.lock:
            self.types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The served type, or ``None``."""
        return self.types.get((group, version, plural))

    def type_of(self, api_version: str, kind: str) -> ResourceType | None:
        """The served type of an ``apiVersion``/``kind`` pair."""
        group, _, version = api_version.rpartition("/")
        return next((t for t in self.types.values() if t.group == group and t.version == version and t.kind == kind), None)

    # ----------------------------------------------------------------- reads

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        """The stored object (a copy), or a 404."""
        with self.lock:
            obj = self.objects[rtype.key].get((namespace or "", name))
            if obj is None:
                raise self._not_found(rtype, name)
            return self._as_version(rtype, obj)

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """The stored object (a copy), or ``None``."""
        with self.lock:
            obj = self.objects[rtype.key].get((namespace or "", name))
            return self._as_version(rtype, obj) if obj is not None else None

    def list(self, rtype: ResourceType, namespace: str | None,
             predicate: Callable[[Obj], bool] = lambda o: True) -> tuple[list[Obj], int]:
        """Matching objects (copies, sorted by namespace and name) and the list's resourceVersion."""
        with self.lock:
            items = [self._as_version(rtype, obj) for (ns, _), obj in sorted(self.objects[rtype.key].items())
                     if (not namespace or ns == namespace) and predicate(obj)]
            return items, self.rv

    # ---------------------------------------------------------------- writes

    def create(self, rtype: ResourceType, namespace: str | None, body: Obj, *, manager: str,
               operation: str = "Update") -> Obj:
        """POST: a new object, or 409 AlreadyExists."""
        with self.lock:
            if not isinstance(body, dict):
                raise StatusError(400, "BadRequest", "the body of the request was not a JSON object")
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise StatusError(400, "BadRequest", "metadata must be an object")
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            name = meta.get("name")
            if not name:
                raise self._invalid(rtype, "", [{"field": "metadata.name", "message": "Required value: name or generateName is required"}])
            ns = self._namespace_for(rtype, namespace, meta)
            if (ns, name) in self.objects[rtype.key]:
                raise StatusError(409, "AlreadyExists", f'{rtype.resource_name} "{name}" already exists',
                                  details={"name": name, "group": rtype.group, "kind": rtype.plural})
            for key in SERVER_METADATA:
                meta.pop(key, None)
            obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
            if rtype.status_subresource:
                obj.pop("status", None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            if rtype.schema is not None:
                obj = prune_and_default(rtype.schema, obj)
                meta = obj["metadata"]
            causes = rtype.validate(obj)
            if causes:
                raise self._invalid(rtype, name, causes)
            paths = F.owned_paths(obj, subresource=None, status_subresource=rtype.status_subresource)
            if rtype.status_subresource and "status" in body and operation == "Update":
                pass  # status given on create is dropped, as the API does
            meta["managedFields"] = [self._entry(rtype, manager, operation, paths, None)] if paths else []
            self._commit(rtype, "ADDED", obj, None)
            if rtype.kind == "CustomResourceDefinition":
                self._register_crd(obj)
            return self._as_version(rtype, obj)

    def replace(self, rtype: ResourceType, namespace: str | None, name: str, body: Obj, *,
                manager: str, subresource: str | None = None) -> Obj:
        """PUT: replace the object (or only its status through ``/status``)."""
        with self.lock:
            old = self._stored(rtype, namespace, name)
            if not isinstance(body, dict):
                raise StatusError(400, "BadRequest", "the body of the request was not a JSON object")
            self._check_identity(rtype, name, namespace, body)
            self._check_precondition(rtype, name, old, body)
            new = copy.deepcopy(body)
            return self._update(rtype, old, new, manager=manager, subresource=subresource)

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, patch: Any, content_type: str, *,
              manager: str | None, force: bool = False, subresource: str | None = None) -> tuple[Obj, bool]:
        """PATCH of any kind; returns the object and whether it was created (server-side apply only)."""
        with self.lock:
            if content_type == APPLY:
                return self._apply(rtype, namespace, name, patch, manager=manager, force=force, subresource=subresource)
            old = self._stored(rtype, namespace, name)
            if content_type in (MERGE, STRATEGIC):
                if not isinstance(patch, dict):
                    raise StatusError(400, "BadRequest", "a merge patch must be a JSON object")
                self._check_precondition(rtype, name, old, patch)
                new = F.merge_patch(old, patch)
            elif content_type == JSON_PATCH:
                try:
                    new = jsonpatch.apply_patch(old, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
                    raise StatusError(422 if isinstance(exc, jsonpatch.JsonPatchTestFailed) else 400,
                                      "Invalid" if isinstance(exc, jsonpatch.JsonPatchTestFailed) else "BadRequest",
                                      f"the server rejected our request due to an error in our request: {exc}")
            else:
                raise StatusError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                  f"accepted media types include: {JSON_PATCH}, {MERGE}, {APPLY}, {STRATEGIC}")
            return self._update(rtype, old, new, manager=manager or "unknown", subresource=subresource), False

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, *, grace_period_seconds: int | None = None,
               propagation_policy: str | None = None, preconditions: dict[str, Any] | None = None) -> tuple[Obj, bool]:
        """DELETE: returns the object and whether it is gone now (``False``: finalizers keep it terminating)."""
        with self.lock:
            old = self._stored(rtype, namespace, name)
            meta = old["metadata"]
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise StatusError(409, "Conflict", f'Precondition failed: UID in precondition: {pre["uid"]}, UID in object meta: {meta.get("uid")}')
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
                raise StatusError(409, "Conflict", f'Precondition failed: ResourceVersion in precondition: {pre["resourceVersion"]}, ResourceVersion in object meta: {meta.get("resourceVersion")}')
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return self._as_version(rtype, old), False
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now()
                new["metadata"]["deletionGracePeriodSeconds"] = int(grace_period_seconds or 0)
                new["metadata"]["generation"] = int(meta.get("generation") or 1) + 1
                self._commit(rtype, "MODIFIED", new, old)
                return self._as_version(rtype, new), False
            final = copy.deepcopy(old)
            final["metadata"].setdefault("deletionTimestamp", now())
            final["metadata"]["deletionGracePeriodSeconds"] = int(grace_period_seconds or 0)
            self._remove(rtype, final, propagation_policy)
            return self._as_version(rtype, final), True

    # ------------------------------------------------------------- watching

    def subscribe(self, rtype: ResourceType, namespace: str | None, predicate: Callable[[Obj], bool],
                  resource_version: str | None, loop: asyncio.AbstractEventLoop, *,
                  internal: bool = False) -> tuple[Watcher, list[tuple[str, Obj]], int]:
        """Open a watch: the watcher, the events to send first, and the resourceVersion they start from.

        No ``resourceVersion`` (or ``"0"``): the current objects as ADDED events,
        then changes. A number: every change after it from the history, or
        ``410 Gone`` when the history no longer reaches back that far.
        """
        with self.lock:
            watcher = Watcher(rtype.key, namespace, predicate, loop, internal=internal)
            first: list[tuple[str, Obj]] = []
            if not resource_version or resource_version == "0":
                items, _ = self.list(rtype, namespace, predicate)
                first = [("ADDED", o) for o in items]
                start = self.rv
            else:
                try:
                    start = int(resource_version)
                except ValueError:
                    raise StatusError(400, "BadRequest", f'invalid resourceVersion "{resource_version}"') from None
                if start < self.oldest_rv:
                    raise _gone(start, self.oldest_rv)
                for rv, key, etype, new, old in self.history:
                    if rv > start and key == rtype.key:
                        event = watcher.translate(etype, new, old)
                        if event is not None:
                            first.append((event[0], self._as_version(rtype, event[1])))
            watcher.seen_rv = max(start, self.rv)
            self.watchers.add(watcher)
            return watcher, first, start

    def unsubscribe(self, watcher: Watcher) -> None:
        """Forget a watcher."""
        with self.lock:
            watcher.close()
            self.watchers.discard(watcher)

    def bookmark_rv(self, watcher: Watcher) -> int | None:
        """The resourceVersion a bookmark may carry now, or ``None`` while events still wait to be sent."""
        with self.lock:
            return None if watcher.items else watcher.seen_rv

    def compact(self) -> int:
        """Forget the change history: a watch from any older resourceVersion gets ``410 Gone``."""
        with self.lock:
            self.history.clear()
            self.oldest_rv = self.rv
            return self.rv

    def drop_watches(self, *, abrupt: bool = True) -> int:
        """End every open watch (``abrupt``: cut the connection; else end the stream cleanly)."""
        with self.lock:
            watchers = [w for w in self.watchers if not w.internal]
            for w in watchers:
                w.close("drop" if abrupt else "closed")
                self.watchers.discard(w)
            return len(watchers)

    def close_all(self) -> None:
        """End every watch, the in-process ones too (the emulator is stopping)."""
        with self.lock:
            for w in self.watchers:
                w.close("closed")
            self.watchers.clear()

    # ------------------------------------------------------------- internals

    def _as_version(self, rtype: ResourceType, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = rtype.api_version
        return out

    def _not_found(self, rtype: ResourceType, name: str) -> StatusError:
        return StatusError(404, "NotFound", f'{rtype.resource_name} "{name}" not found',
                           details={"name": name, "group": rtype.group, "kind": rtype.plural})

    def _invalid(self, rtype: ResourceType, name: str, causes: list[dict[str, str]]) -> StatusError:
        text = ", ".join(f'{c["field"]}: {c["message"]}' for c in causes)
        kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
        return StatusError(422, "Invalid", f'{kind} "{name}" is invalid: {"[" + text + "]" if len(causes) > 1 else text}',
                           details={"name": name, "group": rtype.group, "kind": rtype.kind,
                                    "causes": [{"reason": "FieldValueInvalid", **c} for c in causes]})

    def _stored(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.objects[rtype.key].get((namespace or "", name))
        if obj is None:
            raise self._not_found(rtype, name)
        return obj

    def _namespace_for(self, rtype: ResourceType, namespace: str | None, meta: Obj) -> str:
        if not rtype.namespaced:
            meta.pop("namespace", None)
            return ""
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise StatusError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        ns = namespace or meta.get("namespace")
        if not ns:
            raise StatusError(400, "BadRequest", "the namespace of the object is required")
        meta["namespace"] = ns
        if ("", ns) not in self.objects[("", "namespaces")]:
            if self.strict_namespaces:
                raise StatusError(404, "NotFound", f'namespaces "{ns}" not found', details={"name": ns, "kind": "namespaces"})
            self._create_namespace(ns)
        return ns

    def _create_namespace(self, ns: str) -> None:
        rtype = self.types[("", "v1", "namespaces")]
        obj = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": ns, "uid": str(uuid.uuid4()), "creationTimestamp": now(),
                            "labels": {"kubernetes.io/metadata.name": ns}},
               "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        self._commit(rtype, "ADDED", obj, None)

    def _check_identity(self, rtype: ResourceType, name: str, namespace: str | None, body: Obj) -> None:
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise StatusError(400, "BadRequest", f'the name of the object ({meta["name"]}) does not match the name on the URL ({name})')
        if rtype.namespaced and meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise StatusError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")

    def _check_precondition(self, rtype: ResourceType, name: str, old: Obj, body: Obj) -> None:
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv and str(rv) != old["metadata"].get("resourceVersion"):
            raise StatusError(409, "Conflict", f'Operation cannot be fulfilled on {rtype.resource_name} "{name}": '
                              "the object has been modified; please apply your changes to the latest version and try again",
                              details={"name": name, "group": rtype.group, "kind": rtype.plural})

    def _entry(self, rtype: ResourceType, manager: str, operation: str, paths: Iterable[F.Path],
               subresource: str | None) -> Obj:
        entry: Obj = {"manager": manager, "operation": operation, "apiVersion": rtype.api_version, "time": now(),
                      "fieldsType": "FieldsV1", "fieldsV1": F.paths_to_fields(paths)}
        if subresource:
            entry["subresource"] = subresource
        return entry

    def _apply(self, rtype: ResourceType, namespace: str | None, name: str, body: Any, *, manager: str | None,
               force: bool, subresource: str | None) -> tuple[Obj, bool]:
        if not manager:
            raise StatusError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
        if not isinstance(body, dict):
            raise StatusError(400, "BadRequest", "an apply patch must be an object")
        if body.get("apiVersion") is None or body.get("kind") is None:
            raise StatusError(400, "BadRequest", "invalid object type: apiVersion and kind are required in an apply patch")
        if body.get("kind") != rtype.kind or body.get("apiVersion") not in (rtype.api_version,) and \
                body.get("apiVersion", "").rpartition("/")[0] != rtype.group:
            raise StatusError(400, "BadRequest", f'the kind of the object ({body.get("apiVersion")}, Kind={body.get("kind")}) '
                              f"does not match the resource ({rtype.api_version}, Kind={rtype.kind})")
        self._check_identity(rtype, name, namespace, body)
        old = self.objects[rtype.key].get((namespace or "", name))
        if old is None:
            if subresource:
                raise self._not_found(rtype, name)
            created = copy.deepcopy(body)
            created.setdefault("metadata", {})["name"] = name
            return self.create(rtype, namespace, created, manager=manager, operation="Apply"), True
        self._check_precondition(rtype, name, old, body)
        scope = subresource
        applied = F.owned_paths(body, subresource=scope, status_subresource=rtype.status_subresource)
        entries = copy.deepcopy(old["metadata"].get("managedFields") or [])
        mine = next((e for e in entries if e["manager"] == manager and e["operation"] == "Apply"
                     and e.get("subresource") == scope), None)
        previous = F.fields_to_paths(mine["fieldsV1"]) if mine else set()
        conflicts: list[tuple[Obj, F.Path]] = []
        for entry in entries:
            if entry is mine or entry.get("subresource") != scope or entry["manager"] == manager:
                continue
            for path in F.fields_to_paths(entry.get("fieldsV1") or {}) & applied:
                if F.get_path(old, path) != F.get_path(body, path):
                    conflicts.append((entry, path))
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "field": "." + ".".join(p),
                       "message": f'conflict with "{e["manager"]}"' + (" using " + e["apiVersion"] if e.get("apiVersion") else "")}
                      for e, p in conflicts]
            text = "\n".join(f'- {c["message"]}: {c["field"]}' for c in causes)
            raise StatusError(409, "Conflict", f"Apply failed with {len(causes)} conflict{'s' if len(causes) > 1 else ''}: {text}",
                              details={"name": name, "group": rtype.group, "kind": rtype.plural, "causes": causes})
        for entry, path in conflicts:
            entry["fieldsV1"] = F.paths_to_fields(F.fields_to_paths(entry["fieldsV1"]) - {path})
        others: set[F.Path] = set()
        for entry in entries:
            if entry is not mine and entry.get("subresource") == scope:
                others |= F.fields_to_paths(entry.get("fieldsV1") or {})
        new = copy.deepcopy(old)
        for path in previous - applied - others:
            F.remove_path(new, path)
        patch: Obj = {}
        for key, value in body.items():
            if key in ("apiVersion", "kind"):
                continue
            if key == "metadata":
                ownable = {k: v for k, v in (value or {}).items() if k in F.OWNABLE_METADATA}
                if ownable:
                    patch["metadata"] = ownable
                continue
            if rtype.status_subresource and (key == "status") != (scope == "status"):
                continue
            patch[key] = value
        if scope == "status" and rtype.status_subresource and "status" not in patch:
            patch["status"] = {}
        new = F.deep_merge(new, patch)
        entries = [e for e in entries if e is not mine]
        if applied:
            entries.append(self._entry(rtype, manager, "Apply", applied, scope))
        new["metadata"]["managedFields"] = entries
        return self._update(rtype, old, new, manager=manager, subresource=subresource, managed=True), False

    def _update(self, rtype: ResourceType, old: Obj, new: Obj, *, manager: str, subresource: str | None,
                managed: bool = False) -> Obj:
        if subresource and not rtype.status_subresource:
            raise self._not_found(rtype, old["metadata"]["name"])
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise StatusError(400, "BadRequest", "metadata must be an object")
        old_meta = old["metadata"]
        if rtype.status_subresource:
            if subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
                if managed:
                    new["metadata"]["managedFields"] = meta.get("managedFields")
                meta = new["metadata"]
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        for key in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds",
                    "generation", "resourceVersion"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise StatusError(422, "Invalid", f'{rtype.kind} "{meta["name"]}" is invalid: metadata.finalizers: '
                                  f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}")
        if rtype.schema is not None:
            new = prune_and_default(rtype.schema, new)
            meta = new["metadata"]
        causes = rtype.validate(new)
        if causes:
            raise self._invalid(rtype, meta["name"], causes)
        if not managed:
            scope = subresource if rtype.status_subresource else None
            candidates = F.owned_paths(new, subresource=scope, status_subresource=rtype.status_subresource) | \
                F.owned_paths(old, subresource=scope, status_subresource=rtype.status_subresource)
            changed = F.changed_paths(old, new, candidates)
            present = F.owned_paths(new, subresource=scope, status_subresource=rtype.status_subresource)
            entries = copy.deepcopy(old_meta.get("managedFields") or [])
            kept = []
            mine = set(changed & present)
            for entry in entries:
                paths = F.fields_to_paths(entry.get("fieldsV1") or {})
                if entry.get("subresource") == scope:
                    if entry["manager"] == manager and entry["operation"] == "Update":
                        mine |= paths & present
                        continue
                    paths = (paths - changed) & present
                    if paths != F.fields_to_paths(entry.get("fieldsV1") or {}):
                        entry["fieldsV1"] = F.paths_to_fields(paths)
                        if not paths:
                            continue
                kept.append(entry)
            if changed:
                kept.append(self._entry(rtype, manager, "Update", mine, scope))
            elif any(e["manager"] == manager and e["operation"] == "Update" and e.get("subresource") == scope for e in entries):
                kept.append(next(e for e in entries if e["manager"] == manager and e["operation"] == "Update"
                                 and e.get("subresource") == scope))
            meta["managedFields"] = kept
        strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status", "apiVersion", "kind")}  # noqa: E731
        if strip(new) != strip(old):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        if self._same(old, new):
            return self._as_version(rtype, old)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rtype, new, None)
            return self._as_version(rtype, new)
        self._commit(rtype, "MODIFIED", new, old)
        if rtype.kind == "CustomResourceDefinition":
            self._register_crd(new)
        return self._as_version(rtype, new)

    @staticmethod
    def _same(old: Obj, new: Obj) -> bool:
        def norm(o: Obj) -> Obj:
            o = copy.deepcopy(o)
            for e in o.get("metadata", {}).get("managedFields") or []:
                e.pop("time", None)
            return o
        return norm(old) == norm(new)

    def _commit(self, rtype: ResourceType, etype: str, new: Obj, old: Obj | None) -> None:
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        meta = new["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        if etype == "DELETED":
            self.objects[rtype.key].pop(key, None)
        else:
            self.objects[rtype.key][key] = new
        snapshot_new = copy.deepcopy(new) if etype != "DELETED" else None
        snapshot_old = copy.deepcopy(old) if old is not None else None
        if etype == "DELETED":
            snapshot_old = copy.deepcopy(new)
        self.history.append((self.rv, rtype.key, etype, snapshot_new, snapshot_old))
        while len(self.history) > self.history_limit:
            dropped = self.history.popleft()
            self.oldest_rv = dropped[0]
        for watcher in list(self.watchers):
            if watcher.key == rtype.key:
                watcher.offer(etype, snapshot_new, snapshot_old, self.rv)

    def _remove(self, rtype: ResourceType, final: Obj, propagation_policy: str | None) -> None:
        """Remove an object for good, then collect what it owned and, for a namespace, what it held."""
        self._commit(rtype, "DELETED", final, None)
        uid = final["metadata"].get("uid")
        if rtype.kind == "Namespace":
            ns = final["metadata"]["name"]
            for t in self._storage_types():
                if t.namespaced:
                    for (ons, oname) in [k for k in self.objects[t.key] if k[0] == ns]:
                        if (ons, oname) in self.objects[t.key]:
                            self.delete(t, ons, oname)
        if rtype.kind == "CustomResourceDefinition":
            self._unregister_crd(final)
        for t in self._storage_types():
            for (ons, oname), obj in list(self.objects[t.key].items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == uid for r in refs):
                    continue
                remaining = [r for r in refs if r.get("uid") != uid and self._owner_exists(r, ons)]
                if propagation_policy == "Orphan" or remaining:
                    changed = copy.deepcopy(obj)
                    changed["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    if not changed["metadata"]["ownerReferences"]:
                        del changed["metadata"]["ownerReferences"]
                    self._commit(t, "MODIFIED", changed, obj)
                elif (ons, oname) in self.objects[t.key]:
                    self.delete(t, ons or None, oname, propagation_policy=propagation_policy)

    def _owner_exists(self, ref: Obj, namespace: str) -> bool:
        for t in self._storage_types():
            if t.kind == ref.get("kind"):
                for (ns, name), obj in self.objects[t.key].items():
                    if obj["metadata"].get("uid") == ref.get("uid"):
                        return True
        return False

    def _storage_types(self) -> list[ResourceType]:
        seen: dict[tuple[str, str], ResourceType] = {}
        for t in self.types.values():
            seen.setdefault(t.key, t)
        return list(seen.values())

    def _register_crd(self, crd: Obj) -> None:
        for rtype in types_from_crd(crd):
            existing = self.find_type(rtype.group, rtype.version, rtype.plural)
            if existing is not None:
                rtype.validators = existing.validators
            self.add_type(rtype)

    def _unregister_crd(self, crd: Obj) -> None:
        for rtype in types_from_crd(crd):
            if not any(t.key == rtype.key and t.validators for t in self.types.values()):
                self.types.pop((rtype.group, rtype.version, rtype.plural), None)
