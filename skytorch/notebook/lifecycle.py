"""Computes tied to the life of the Jupyter kernel that made them.

:func:`install` (called by :func:`skytorch.client._hooks.maybe_install_kernel_integration`
when the first Compute of a kernel is created, and by ``%load_ext skytorch``):

- puts this kernel's labels into :data:`skytorch.client._hooks.default_labels`
  (``skytorch.dev/kernel``, ``skytorch.dev/host``, ``skytorch.dev/kernel-pid``,
  ``skytorch.dev/kernel-start``), so every Compute names the kernel it belongs to;
- registers every new Compute in the kernel's :class:`Registry`;
- deletes the registered Computes, except those made with ``keep=True``, when
  the kernel shuts down or restarts: first from the kernel's ``shutdown_request``
  (while its event loop still runs, bounded by ``SKYTORCH_SHUTDOWN_TIMEOUT``
  seconds, default 2), then from an ``atexit`` hook for anything left.

:func:`collect_garbage` (``%skytorch gc``) finds Computes whose kernel died without
cleaning up (SIGKILL, a crashed machine) from those labels and deletes them.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import re
import signal
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from skytorch.client import _hooks, current_backend
from skytorch.client.compute import KEEP_LABEL  # on Computes made with keep=True: neither shutdown nor gc deletes them

if TYPE_CHECKING:  # pragma: no cover
    from skytorch.client import Compute
    from skytorch.resources import ComputeResource

logger = logging.getLogger(__name__)

#: Label naming the kernel that created a Compute.
KERNEL_LABEL = "skytorch.dev/kernel"
#: Label naming the host that kernel ran on.
HOST_LABEL = "skytorch.dev/host"
#: Label holding the kernel's process id on that host.
PID_LABEL = "skytorch.dev/kernel-pid"
#: Label holding the kernel process's start time (seconds since the epoch), to tell a reused pid apart.
START_LABEL = "skytorch.dev/kernel-start"

_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """Turn ``text`` into a valid Kubernetes label value (at most 63 characters, alphanumeric ends)."""
    value = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:63]
    value = value.strip("-_.")
    if not _LABEL_VALUE_RE.match(value):  # pragma: no cover - the substitutions above guarantee it
        raise ValueError(f"cannot make a label value of {text!r}")
    return value


def kernel_id() -> str:
    """This kernel's id, or a per-process uuid outside a kernel.

    The id is the name of the kernel's connection file without ``kernel-`` and
    ``.json`` (Jupyter servers name it ``kernel-<kernel id>.json``).
    """
    global _kernel_id
    if _kernel_id is None:
        found = None
        try:
            from ipykernel.connect import get_connection_file

            stem = os.path.splitext(os.path.basename(get_connection_file()))[0]
            found = stem.removeprefix("kernel-") or None
        except Exception:  # not in a kernel, or no connection file
            found = None
        _kernel_id = label_value(found or f"process-{uuid.uuid4()}")
    return _kernel_id


_kernel_id: str | None = None


def _process_start(pid: int) -> int | None:
    try:
        import psutil

        return int(psutil.Process(pid).create_time())
    except Exception:
        return None


def kernel_labels() -> dict[str, str]:
    """The labels that tie a Compute to this kernel."""
    labels = {
        KERNEL_LABEL: kernel_id(),
        HOST_LABEL: label_value(socket.gethostname()) or "unknown",
        PID_LABEL: str(os.getpid()),
    }
    start = _process_start(os.getpid())
    if start is not None:
        labels[START_LABEL] = str(start)
    return labels


# --------------------------------------------------------------------------- registry


class Registry:
    """The Computes created in this kernel, in creation order.

    A Compute leaves the registry once it is deleted. Listeners
    (``callback(compute, "added" | "removed")``) let the dashboard add and drop rows.
    """

    def __init__(self) -> None:
        self._computes: dict[int, "Compute"] = {}
        self._unsubscribe: dict[int, Callable[[], None]] = {}
        self._listeners: list[Callable[["Compute", str], None]] = []
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._computes)

    def computes(self, *, include_kept: bool = True) -> list["Compute"]:
        """The registered Computes (optionally without the kept ones)."""
        with self._lock:
            found = list(self._computes.values())
        return [c for c in found if include_kept or not getattr(c, "keep", False)]

    def find(self, name: str) -> "Compute | None":
        """The most recent registered Compute of that name."""
        for compute in reversed(self.computes()):
            if compute.name == name:
                return compute
        return None

    def register(self, compute: "Compute") -> None:
        """Track ``compute`` (called for every new Compute through ``_hooks.compute_created``)."""
        key = id(compute)
        with self._lock:
            if key in self._computes:
                return
            # a new Compute of the same name replaces the old object (server-side apply updates it)
            for old_key, old in list(self._computes.items()):
                if old.name == compute.name and old.namespace == compute.namespace:
                    self._drop(old_key)
            self._computes[key] = compute
        try:
            self._unsubscribe[key] = compute.subscribe(self._on_change)
        except Exception:  # pragma: no cover - a Compute without subscribe is still cleaned up
            logger.debug("Cannot subscribe to %s", compute.name, exc_info=True)
        self._notify(compute, "added")

    def _drop(self, key: int) -> None:
        compute = self._computes.pop(key, None)
        unsubscribe = self._unsubscribe.pop(key, None)
        if unsubscribe is not None:
            try:
                unsubscribe()
            except Exception:  # pragma: no cover
                logger.debug("unsubscribe failed", exc_info=True)
        if compute is not None:
            self._notify(compute, "removed")

    def _on_change(self, compute: "Compute", what: str) -> None:
        if what == "state" and compute.state == "Deleted":
            with self._lock:
                self._drop(id(compute))

    def add_listener(self, callback: Callable[["Compute", str], None]) -> Callable[[], None]:
        """Call ``callback(compute, "added" | "removed")`` on changes; returns a function that stops it."""
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    def _notify(self, compute: "Compute", what: str) -> None:
        for callback in list(self._listeners):
            try:
                callback(compute, what)
            except Exception:
                logger.exception("registry listener %r failed", callback)

    async def delete_all(self, *, include_kept: bool = False, timeout: float | None = None) -> list[str]:
        """Delete the registered Computes (the kept ones only with ``include_kept``), in parallel.

        Returns the names deleted. Failures are logged, not raised, so that one
        broken Compute does not keep the others alive.
        """
        targets = [c for c in self.computes(include_kept=include_kept) if c.state != "Deleted"]
        if not targets:
            return []

        async def one(compute: "Compute") -> str | None:
            try:
                await compute.delete()
                return compute.name
            except Exception:
                logger.warning("Could not delete Compute %s", compute.name, exc_info=True)
                return None

        tasks = [asyncio.ensure_future(one(c)) for c in targets]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("%d Compute deletions did not finish within %ss", len(pending), timeout)
        return [t.result() for t in done if not t.cancelled() and t.result()]


_registry = Registry()


def registry() -> Registry:
    """The Registry of this process (one per kernel)."""
    return _registry


# --------------------------------------------------------------------------- kernel shutdown


@dataclass
class _State:
    installed: bool = False
    loop: asyncio.AbstractEventLoop | None = None


_state = _State()


def shutdown_timeout() -> float:
    """Seconds the shutdown cleanup may take (``SKYTORCH_SHUTDOWN_TIMEOUT``, default 2).

    jupyter_client sends SIGTERM 2.5 s after a shutdown request (half of its
    ``shutdown_wait_time``), so the default stays below that.
    """
    try:
        return max(0.1, float(os.environ.get("SKYTORCH_SHUTDOWN_TIMEOUT", "2")))
    except ValueError:
        return 2.0


def _on_created(compute: "Compute") -> None:
    _registry.register(compute)


def install() -> None:
    """Tie this kernel's Computes to its life (idempotent): labels, registration, shutdown cleanup."""
    for key, value in kernel_labels().items():
        _hooks.default_labels.setdefault(key, value)
    if _on_created not in _hooks.compute_created:
        _hooks.compute_created.append(_on_created)
    if _state.installed:
        return
    _state.installed = True
    try:
        _state.loop = asyncio.get_running_loop()
    except RuntimeError:
        _state.loop = None
    kernel = _current_kernel()
    if kernel is not None:
        if _state.loop is None:
            io_loop = getattr(kernel, "io_loop", None)
            _state.loop = getattr(io_loop, "asyncio_loop", None)
        _make_reentrant(_state.loop)
        _patch_shutdown(kernel)
        _install_sigterm_handler()
    atexit.register(_atexit_cleanup)
    logger.debug("Kernel lifecycle installed, labels %s", _hooks.default_labels)


def _make_reentrant(loop: asyncio.AbstractEventLoop | None) -> None:
    """Patch the kernel's loop with ``nest_asyncio`` now, before the first sync entry point nests in it.

    Patching a loop from inside the very iteration that then nests
    ``run_until_complete`` leaves that iteration's (unpatched) frame with a
    drained ready queue; patching early keeps later iterations safe.
    """
    if loop is None or getattr(loop, "_nest_patched", False):
        return
    try:
        import nest_asyncio

        nest_asyncio.apply(loop)
    except Exception:  # pragma: no cover - sync entry points patch the loop themselves as a fallback
        logger.debug("Could not patch the kernel's loop with nest_asyncio", exc_info=True)


def _current_kernel() -> Any:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except Exception:  # pragma: no cover
        return None
    return getattr(shell, "kernel", None)


def _patch_shutdown(kernel: Any) -> None:
    original = kernel.do_shutdown

    async def do_shutdown(restart: bool) -> Any:
        try:
            await _cleanup_at_shutdown()
        except Exception:
            logger.exception("Cleaning up Computes at kernel shutdown failed")
        result = original(restart)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return result

    do_shutdown.__wrapped__ = original  # type: ignore[attr-defined]
    kernel.do_shutdown = do_shutdown


async def _cleanup_at_shutdown() -> None:
    """Delete this kernel's Computes, on the loop that owns them when it is free.

    ``shutdown_request`` arrives on the kernel's control thread. The deletions
    are handed to the kernel's main loop (which owns the Computes' tasks and
    connections); if that loop is busy and does not pick them up within a
    fraction of the budget, they run here instead.
    """
    if not _registry.computes(include_kept=False):
        return
    budget = shutdown_timeout()
    here = asyncio.get_running_loop()
    start = here.time()
    deadline = start + budget
    loop = _state.loop
    if loop is not None and loop is not here and loop.is_running() and not loop.is_closed():
        started = threading.Event()

        async def on_main_loop() -> list[str]:
            started.set()
            return await _registry.delete_all(timeout=budget * 0.9)

        future = asyncio.run_coroutine_threadsafe(on_main_loop(), loop)
        pickup = min(0.5, budget / 4)
        while not started.is_set() and here.time() < start + pickup:
            await asyncio.sleep(0.02)
        if started.is_set():
            try:
                deleted = await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(0.1, deadline - here.time()))
                logger.info("Deleted at kernel shutdown: %s", ", ".join(deleted) or "nothing")
                return
            except (asyncio.TimeoutError, concurrent.futures.CancelledError):
                logger.warning("Deleting Computes at kernel shutdown did not finish in %ss", budget)
                return
        future.cancel()
        logger.warning("The kernel's loop is busy; deleting Computes from the shutdown thread")
    deleted = await _registry.delete_all(timeout=max(0.2, deadline - here.time()))
    logger.info("Deleted at kernel shutdown: %s", ", ".join(deleted) or "nothing")


def _atexit_cleanup() -> None:
    """Last chance: delete what is left on a fresh event loop."""
    left = [c for c in _registry.computes(include_kept=False) if c.state != "Deleted"]
    if not left:
        return
    try:
        asyncio.run(_registry.delete_all(timeout=shutdown_timeout()))
    except Exception:
        logger.exception("Cleaning up Computes at exit failed")


def _install_sigterm_handler() -> None:
    """Turn SIGTERM (what jupyter_client sends a slow kernel) into a normal exit, so atexit runs."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):  # pragma: no cover - not the main thread of the main interpreter
        pass


# --------------------------------------------------------------------------- gc


@dataclass
class Orphan:
    """A Compute whose kernel is gone, as found by :func:`find_orphans`."""

    name: str
    namespace: str | None
    kernel: str
    host: str
    reason: str


def kernel_is_dead(labels: dict[str, str], *, any_host: bool = False) -> str | None:
    """Why the kernel named by a Compute's labels is known to be gone, or ``None`` if it may be alive.

    On this host, the kernel is gone when its pid no longer runs or runs a process
    started at another time (a reused pid). A kernel on another host cannot be
    checked from here: it counts as gone only with ``any_host=True``.
    """
    if labels.get(KERNEL_LABEL) == kernel_id():
        return None
    host = labels.get(HOST_LABEL, "")
    if host != label_value(socket.gethostname()):
        return f"kernel on another host ({host or 'unknown'})" if any_host else None
    try:
        pid = int(labels.get(PID_LABEL, ""))
    except ValueError:
        return "kernel without a pid label"
    start = _process_start(pid)
    if start is None:
        return f"kernel process {pid} is gone"
    wanted = labels.get(START_LABEL)
    if wanted and wanted.isdigit() and abs(int(wanted) - start) > 2:
        return f"pid {pid} now belongs to another process"
    return None


def find_orphans(resources: Iterable["ComputeResource"], *, any_host: bool = False) -> list[Orphan]:
    """The Computes among ``resources`` that a dead kernel left behind (kept ones excluded)."""
    orphans = []
    for resource in resources:
        labels = resource.metadata.labels or {}
        if KERNEL_LABEL not in labels or labels.get(KEEP_LABEL) == "true":
            continue
        if resource.metadata.deletion_timestamp:
            continue
        reason = kernel_is_dead(labels, any_host=any_host)
        if reason:
            orphans.append(
                Orphan(
                    name=resource.metadata.name,
                    namespace=resource.metadata.namespace,
                    kernel=labels[KERNEL_LABEL],
                    host=labels.get(HOST_LABEL, ""),
                    reason=reason,
                )
            )
    return orphans


async def collect_garbage(*, dry_run: bool = False, any_host: bool = False) -> list[Orphan]:
    """Delete the Computes of the current backend's namespace whose kernel died without cleaning up.

    Returns what was found (and, unless ``dry_run``, deleted).
    """
    backend = await current_backend()
    orphans = find_orphans(await backend.list(KERNEL_LABEL), any_host=any_host)
    if not dry_run:
        for orphan in orphans:
            await backend.delete(orphan.name)
            logger.info("gc deleted Compute %s (%s)", orphan.name, orphan.reason)
    return orphans
