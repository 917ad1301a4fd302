"""A stand-in for the SkyTorch operator that drives Computes through their conditions.

It watches Computes in the emulator's store like a controller and answers as
the real operator would, writing through the ``status`` subresource with the
operator's field manager and posting core v1 Events:

- a new Compute: ``Ready=False`` (``StatefulSetNotReady``), Event ``Created``;
  then, after ``ready_delay`` seconds (or when a test calls :meth:`set_ready`),
  ``Ready=True`` with an address, Events ``Started`` and ``Ready``;
- ``spec.suspend: true``: ``Suspended=True``, ``Ready=False``, Event ``Suspended``;
  back to ``false``: Event ``Resumed`` and the way to ready again;
- :meth:`fail` (now, or for a Compute not applied yet): ``Ready=False`` with the
  given reason and a Warning Event (``BackOff`` by default);
- deletion: Event ``Killing``.

It lives on the emulator's loop; its public methods may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tests.emulator.errors import StatusError
from tests.emulator.store import MERGE, Obj, now

logger = logging.getLogger(__name__)

OPERATOR_FIELD_MANAGER = "skytorch-operator"
Key = tuple[str, str]


class FakeOperator:
    """Plays the operator for Computes in ``emulator`` (a running :class:`~tests.emulator.KubeEmulator`).

    ``ready_delay``: seconds from a Compute's (re)start to ``Ready=True``;
    ``None`` waits for :meth:`set_ready`.
    """

    def __init__(self, emulator: Any, *, ready_delay: float | None = 0.2) -> None:
        self.emulator = emulator
        self.ready_delay = ready_delay
        self._task: asyncio.Task | None = None
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._observed: dict[Key, int] = {}
        self._suspended: dict[Key, bool] = {}
        self._failing: dict[Key, tuple[str, str, str]] = {}
        self._rtype = emulator.store.find_type("compute.skytorch.dev", "v1alpha1", "computes")
        emulator.operator = self

    # ------------------------------------------------------------ control

    def start(self) -> "FakeOperator":
        """Start reconciling (idempotent)."""
        self.emulator.call(self._start)
        return self

    def stop(self) -> None:
        """Stop reconciling and cancel pending transitions."""
        if self.emulator.loop is not None and not self.emulator.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.emulator.call(self._stop)

    def set_ready(self, name: str, namespace: str = "default") -> None:
        """Make the Compute ``Ready=True`` now."""
        self.emulator.call(self._ready, (namespace, name))

    def set_not_ready(self, name: str, namespace: str = "default", *, reason: str = "StatefulSetNotReady",
                      message: str = "Waiting for the pod to be ready") -> None:
        """Make the Compute ``Ready=False`` now (no event)."""
        self.emulator.call(self._not_ready, (namespace, name), reason, message)

    def fail(self, name: str, namespace: str = "default", *, reason: str = "BackOff",
             message: str = "Back-off restarting failed container", condition_reason: str = "CrashLoopBackOff") -> None:
        """Fail the Compute: now if it exists, else as soon as it is applied. It never becomes ready by itself."""
        self.emulator.call(self._fail, (namespace, name), reason, message, condition_reason)

    def heal(self, name: str, namespace: str = "default") -> None:
        """Forget a :meth:`fail`; the Compute goes to ready again as a new one would."""
        self.emulator.call(self._heal, (namespace, name))

    # ------------------------------------------------------------ loop side

    async def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fake-operator")

    async def _stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        store = self.emulator.store
        loop = asyncio.get_running_loop()
        rv: str | None = None
        while True:
            try:
                watcher, first, start = store.subscribe(self._rtype, None, lambda o: True, rv, loop, internal=True)
            except StatusError:  # history compacted: start over from the current state
                rv = None
                continue
            try:
                for etype, obj in first:
                    self._reconcile(etype, obj)
                rv = str(start)
                while True:
                    item = await watcher.next()
                    if item is None:
                        continue
                    etype, obj = item
                    if obj is None:  # the watch was dropped or closed: resume from where we were
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    try:
                        self._reconcile(etype, obj)
                    except Exception:  # keep playing for the other Computes
                        logger.exception("fake operator failed to reconcile %s", obj["metadata"].get("name"))
            finally:
                store.unsubscribe(watcher)

    def _reconcile(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        if etype == "DELETED":
            self._cancel(key)
            self._observed.pop(key, None)
            self._suspended.pop(key, None)
            self._event(obj, "Killing", f"Stopping Compute {meta['name']}")
            return
        generation = int(meta.get("generation") or 1)
        first_time = key not in self._observed
        if self._observed.get(key) == generation:
            return
        self._observed[key] = generation
        suspend = bool((obj.get("spec") or {}).get("suspend"))
        was_suspended = self._suspended.get(key, False)
        self._suspended[key] = suspend
        if suspend:
            self._cancel(key)
            if was_suspended and not first_time:
                return
            self._status(key, ready=("False", "Suspended", "The Compute is suspended"),
                         suspended=("True", "Suspended", "The Compute is suspended"))
            self._event(obj, "Suspended", f"Compute {meta['name']} suspended")
            return
        if first_time:
            self._event(obj, "Created", f"Created StatefulSet {meta['name']}")
        elif was_suspended:
            self._event(obj, "Resumed", f"Compute {meta['name']} resumed")
        if key in self._failing:
            self._fail(key, *self._failing[key])
            return
        self._not_ready(key, "StatefulSetNotReady", "Waiting for the pod to be ready")
        self._schedule(key)

    def _schedule(self, key: Key) -> None:
        self._cancel(key)
        if self.ready_delay is not None:
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(self.ready_delay, self._ready, key)

    def _cancel(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _ready(self, key: Key) -> None:
        self._timers.pop(key, None)
        obj = self._status(key, ready=("True", "StatefulSetReady", "The Compute is ready"),
                           suspended=("False", "NotSuspended", "The Compute is running"),
                           addresses=[{"type": "Hostname", "value": f"{key[1]}.{key[0]}.svc.cluster.local"}])
        if obj is not None:
            self._event(obj, "Started", f"Started pod {key[1]}-0")
            self._event(obj, "Ready", f"Compute {key[1]} is ready")

    def _not_ready(self, key: Key, reason: str, message: str) -> None:
        self._status(key, ready=("False", reason, message), suspended=("False", "NotSuspended", "The Compute is running"))

    def _fail(self, key: Key, reason: str, message: str, condition_reason: str) -> None:
        self._failing[key] = (reason, message, condition_reason)
        self._cancel(key)
        obj = self._status(key, ready=("False", condition_reason, message),
                           suspended=("False", "NotSuspended", "The Compute is running"))
        if obj is not None:
            self._event(obj, reason, message, type="Warning")

    def _heal(self, key: Key) -> None:
        self._failing.pop(key, None)
        if self.emulator.store.find(self._rtype, key[0], key[1]) is not None:
            self._not_ready(key, "StatefulSetNotReady", "Waiting for the pod to be ready")
            self._schedule(key)

    def _status(self, key: Key, *, ready: tuple[str, str, str], suspended: tuple[str, str, str],
                addresses: list[dict[str, str]] | None = None) -> Obj | None:
        store = self.emulator.store
        current = store.find(self._rtype, key[0], key[1])
        if current is None:
            return None
        generation = current["metadata"].get("generation")
        old = {c["type"]: c for c in (current.get("status") or {}).get("conditions") or []}
        conditions = []
        for type_, (status, reason, message) in (("Ready", ready), ("Suspended", suspended)):
            previous = old.get(type_)
            stamp = previous["lastTransitionTime"] if previous and previous.get("status") == status else now()
            conditions.append({"type": type_, "status": status, "reason": reason, "message": message,
                               "lastTransitionTime": stamp, "observedGeneration": generation})
        status: dict[str, Any] = {"conditions": conditions, "addresses": addresses}
        try:
            obj, _ = store.patch(self._rtype, key[0], key[1], {"status": status}, MERGE,
                                 manager=OPERATOR_FIELD_MANAGER, subresource="status")
        except StatusError as exc:
            if exc.code == 404:
                return None
            raise
        return obj

    def _event(self, obj: Obj, reason: str, message: str, *, type: str = "Normal") -> None:
        self.emulator.emit_event(obj, reason, message, type=type, component=OPERATOR_FIELD_MANAGER)
