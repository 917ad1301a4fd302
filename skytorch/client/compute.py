"""``Compute``: one PyTorch tensor server, on Kubernetes or as a local process, as a Python object.

One async core; the few sync conveniences (the constructor outside a loop,
:meth:`Compute.is_ready`) go through :func:`skytorch.client._sync.run_sync`.

Contract with :mod:`skytorch.notebook` (widgets, magics, kernel lifecycle), beyond the seed's API:

- read-only attributes ``name``, ``namespace``, ``image``, ``command``, ``args``,
  ``env``, ``resources``, ``host``/``port`` (the overrides), ``labels``,
  ``annotations``, ``keep``, ``backend_kind``;
- ``state``: one of :data:`STATES`; ``resource``, ``conditions``, ``endpoint``,
  ``created_at``, ``ready_since``, ``recent_events`` (bounded, oldest first),
  ``transfer`` (a :class:`Transfer` while/after a tensor call);
- :meth:`Compute.subscribe` for change notifications (``"state"``, ``"resource"``,
  ``"event"``, ``"transfer"``) and :meth:`Compute.start_watching` to make sure the
  background watch and event stream run on the current loop;
- ``_repr_mimebundle_`` delegates to ``skytorch.notebook.widgets`` lazily.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from skytorch.backends.base import Backend
from skytorch.client import _config, _hooks
from skytorch.client._sync import run_sync
from skytorch.client.events import event_key
from skytorch.errors import ComputeError, ComputeNotReadyError, ComputeSpecError, ComputeTimeoutError, SkyTorchError
from skytorch.resources import (
    DEFAULT_PORT,
    READY,
    ComputeResource,
    ComputeSpec,
    Condition,
    apply_manifest,
    env_list,
    parse_time,
    validate_name,
)

logger = logging.getLogger(__name__)

#: Every value :attr:`Compute.state` takes.
STATES = ("Applying", "Pending", "Ready", "Suspended", "Failed", "Deleted")

#: Label put on Computes created with ``keep=True``.
KEEP_LABEL = "skytorch.dev/keep"

#: How many events :attr:`Compute.recent_events` keeps.
RECENT_EVENTS = 50

#: ``Ready=False`` reasons that mean the Compute failed rather than is still starting.
FAILURE_REASONS = frozenset({
    "Failed", "Error", "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidSpec",
    "InvalidImageName", "CreateContainerError", "CreateContainerConfigError", "ApplyFailed", "BackOff",
})

EventCallback = Callable[[Any], "None | Awaitable[None]"]
Subscriber = Callable[["Compute", str], None]


def _is_failure_reason(reason: str) -> bool:
    return reason in FAILURE_REASONS or reason.endswith(("Failed", "Error", "BackOff"))


@dataclass
class Transfer:
    """Progress of the latest tensor call on a Compute (fed by the TensorClient's progress callback)."""

    direction: str
    bytes_done: int = 0
    bytes_total: int = 0
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.bytes_done / elapsed if elapsed > 0 else 0.0


def _check_str_list(compute: str, what: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ComputeSpecError(f"Compute {compute!r}: {what} must be a list of strings, got {value!r}", compute=compute)
    out = list(value)
    if not all(isinstance(v, str) for v in out):
        raise ComputeSpecError(f"Compute {compute!r}: every item of {what} must be a string, got {out!r}",
                               compute=compute)
    return out


def _check_str_map(compute: str, what: str, value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ComputeSpecError(f"Compute {compute!r}: {what} must be a mapping of strings, got {value!r}",
                               compute=compute)
    bad = {k: v for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ComputeSpecError(f"Compute {compute!r}: {what} keys and values must be strings, got {bad!r}",
                               compute=compute)
    return dict(value)


class Compute:
    """A Compute resource and the gRPC tensor client to its server.

    Constructing it applies the resource (server-side apply on Kubernetes; a
    child server process on the local backend). Inside a running event loop the
    apply runs as a task that every later call awaits first (re-raising its
    error there); outside any loop it completes before the constructor returns.

    Args:
        name: RFC 1035 label, at most 63 characters (checked before any I/O).
        image: container image of the server (ignored on the local backend).
        command, args: entrypoint and its arguments (on the local backend they
            replace ``python -m skytorch.server``; ``args`` alone are extra server flags).
        env: environment variables of the server.
        labels, annotations: metadata of the Compute resource.
        suspend: create it suspended.
        host, port: where to reach the tensor server (default: the backend's
            endpoint, ``{name}.{namespace}.svc.cluster.local:50051`` on Kubernetes).
        on_events: called (sync or async) with every Kubernetes Event about this Compute.
        resources: ``spec.resources``, e.g. ``{"nvidia.com/gpu": "1", "memory": "8Gi"}``.
        keep: kept Computes survive kernel shutdown and ``%skytorch down``.
    """

    def __init__(
        self,
        name: str,
        *,
        image: str | None = None,
        command: Sequence[str] | None = None,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        suspend: bool = False,
        host: str | None = None,
        port: int = DEFAULT_PORT,
        on_events: EventCallback | None = None,
        resources: Mapping[str, str | int] | None = None,
        keep: bool = False,
    ) -> None:
        try:
            self._name = validate_name(name)
        except ValueError as exc:
            raise ComputeSpecError(str(exc), compute=name if isinstance(name, str) else None) from None
        self._validate(image, env, host, port, on_events, resources, suspend)
        self._image = image
        self._command = _check_str_list(name, "command", command)
        self._args = _check_str_list(name, "args", args)
        self._env = _check_str_map(name, "env", env)
        self._annotations = _check_str_map(name, "annotations", annotations) or {}
        user_labels = _check_str_map(name, "labels", labels) or {}
        self._resources = dict(resources) if resources is not None else None
        self._suspend = bool(suspend)
        self._host = host
        self._port = int(port)
        self._on_events = on_events
        self._keep = bool(keep)

        self._backend: Backend | None = None
        self._resource: ComputeResource | None = None
        self._state = "Applying"
        self._applying = True
        self._apply_task: asyncio.Task | None = None
        self._apply_error: BaseException | None = None
        self._deleted = False
        self._seen_resource = False
        self._watch_task: asyncio.Task | None = None
        self._events_task: asyncio.Task | None = None
        self._watch_synced = False
        self._watch_error: BaseException | None = None
        self._waiters: list[asyncio.Future] = []
        self._seen_events: set[tuple[Any, ...]] = set()
        self._recent_events: collections.deque = collections.deque(maxlen=RECENT_EVENTS)
        self._subscribers: list[Subscriber] = []
        self._tensor_client: Any = None
        self._endpoint: tuple[str, int] | None = None
        self._transfer: Transfer | None = None
        self._last_transfer_notify = 0.0

        _hooks.maybe_install_kernel_integration()
        self._labels = {**_hooks.default_labels, **user_labels}
        if self._keep:  # `%skytorch gc` from another kernel leaves kept Computes alone
            self._labels[KEEP_LABEL] = "true"
        _config.mark_initialized()

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._apply_task = loop.create_task(self._initial_apply(), name=f"skytorch-apply-{name}")
            self._apply_task.add_done_callback(_consume_task_error)
            _hooks.notify_created(self)
            self.start_watching()
        else:
            try:
                run_sync(self._initial_apply())
            finally:
                _hooks.notify_created(self)

    # ------------------------------------------------------------------ validation

    def _validate(self, image: Any, env: Any, host: Any, port: Any, on_events: Any, resources: Any,
                  suspend: Any) -> None:
        name = self._name
        if image is not None and (not isinstance(image, str) or not image):
            raise ComputeSpecError(f"Compute {name!r}: image must be a non-empty string, got {image!r}", compute=name)
        if host is not None and (not isinstance(host, str) or not host):
            raise ComputeSpecError(f"Compute {name!r}: host must be a non-empty string, got {host!r}", compute=name)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ComputeSpecError(f"Compute {name!r}: port must be an integer in 1..65535, got {port!r}",
                                   compute=name)
        if on_events is not None and not callable(on_events):
            raise ComputeSpecError(f"Compute {name!r}: on_events must be callable, got {on_events!r}", compute=name)
        if not isinstance(suspend, bool):
            raise ComputeSpecError(f"Compute {name!r}: suspend must be True or False, got {suspend!r}", compute=name)
        if resources is not None:
            if not isinstance(resources, Mapping):
                raise ComputeSpecError(f"Compute {name!r}: resources must be a mapping such as "
                                       f"{{'memory': '8Gi'}}, got {resources!r}", compute=name)
            for key, value in resources.items():
                if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (str, int)):
                    raise ComputeSpecError(f"Compute {name!r}: resources[{key!r}] must be a quantity "
                                           f"(string or integer), got {value!r}", compute=name)

    # ------------------------------------------------------------------ read-only properties

    @property
    def name(self) -> str:
        """The Compute's name."""
        return self._name

    @property
    def namespace(self) -> str | None:
        """Its namespace (``None`` until the configuration is resolved by the first apply)."""
        if self._backend is not None:
            return self._backend.namespace
        return _config.configured_namespace()

    @property
    def image(self) -> str | None:
        """Container image asked for."""
        return self._image

    @property
    def command(self) -> list[str] | None:
        """Entrypoint override."""
        return list(self._command) if self._command is not None else None

    @property
    def args(self) -> list[str] | None:
        """Entrypoint arguments."""
        return list(self._args) if self._args is not None else None

    @property
    def env(self) -> dict[str, str]:
        """Environment variables of the server."""
        return dict(self._env or {})

    @property
    def resources(self) -> dict[str, Any] | None:
        """``spec.resources``."""
        return dict(self._resources) if self._resources is not None else None

    @property
    def labels(self) -> dict[str, str]:
        """Labels on the Compute resource (including the notebook layer's default labels)."""
        return dict(self._labels)

    @property
    def annotations(self) -> dict[str, str]:
        """Annotations on the Compute resource."""
        return dict(self._annotations)

    @property
    def host(self) -> str | None:
        """The gRPC host override, if any."""
        return self._host

    @property
    def port(self) -> int:
        """The gRPC port (default 50051; the local backend uses the port its server bound)."""
        return self._port

    @property
    def keep(self) -> bool:
        """Whether this Compute survives kernel shutdown and ``%skytorch down``."""
        return self._keep

    @property
    def backend_kind(self) -> str:
        """``"kubernetes"`` or ``"local"`` (``"unknown"`` until the configuration is resolved)."""
        backend = self._backend or _config.resolved_backend()
        return backend.kind if backend is not None else "unknown"

    @property
    def state(self) -> str:
        """One of ``Applying``, ``Pending``, ``Ready``, ``Suspended``, ``Failed``, ``Deleted``."""
        return self._state

    @property
    def resource(self) -> ComputeResource | None:
        """The Compute resource as last seen (metadata, spec, status with conditions)."""
        return self._resource

    @property
    def conditions(self) -> list[Condition]:
        """``status.conditions`` as last seen."""
        return list(self._resource.status.conditions) if self._resource is not None else []

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """``(host, port)`` of the tensor server once ``ready()`` connected to it."""
        return self._endpoint

    @property
    def created_at(self) -> _dt.datetime | None:
        """When the resource was created (``metadata.creationTimestamp``)."""
        return parse_time(self._resource.metadata.creation_timestamp) if self._resource is not None else None

    @property
    def ready_since(self) -> _dt.datetime | None:
        """When the ``Ready`` condition last turned ``True`` (``None`` while not ready)."""
        cond = self._resource.condition(READY) if self._resource is not None else None
        return parse_time(cond.last_transition_time) if cond is not None and cond.is_true else None

    @property
    def recent_events(self) -> list[Any]:
        """The latest Kubernetes Events about this Compute (at most 50), oldest first."""
        return list(self._recent_events)

    @property
    def transfer(self) -> Transfer | None:
        """Progress of the latest tensor call, or ``None`` before any."""
        return self._transfer

    def __repr__(self) -> str:
        return (f"Compute(name={self._name!r}, namespace={self.namespace!r}, state={self._state!r}, "
                f"backend={self.backend_kind!r})")

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The notebook widget (from :mod:`skytorch.notebook.widgets`), with text fallbacks."""
        try:
            from skytorch.notebook.widgets import compute_mimebundle
        except ImportError:
            return {"text/plain": repr(self)}
        return compute_mimebundle(self, **kwargs)

    def _who(self) -> str:
        ns = self.namespace
        return f"{ns}/{self._name}" if ns else self._name

    # ------------------------------------------------------------------ notifications

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(compute, what)`` whenever ``what`` changes; returns a function that unsubscribes.

        ``what`` is ``"state"``, ``"resource"``, ``"event"`` or ``"transfer"``. Callbacks run on
        the event loop thread that runs this Compute's background tasks; one that raises is logged.
        """
        self._subscribers.append(callback)

        def _unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return _unsubscribe

    def _notify(self, what: str) -> None:
        for callback in list(self._subscribers):
            try:
                callback(self, what)
            except Exception:
                logger.exception("Subscriber %r of Compute %s failed on %r", callback, self._who(), what)
        if what in ("state", "resource"):
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_change(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _derive_state(self) -> str:
        if self._deleted:
            return "Deleted"
        if self._apply_error is not None:
            return "Failed"
        if self._applying:
            return "Applying"
        res = self._resource
        if res is None:
            return "Deleted" if self._seen_resource else "Pending"
        ready = res.condition(READY)
        if self._is_ready_resource(res):
            return "Ready"
        if res.is_suspended:
            return "Suspended"
        if ready is not None and ready.status == "False" and _is_failure_reason(ready.reason):
            return "Failed"
        return "Pending"

    def _refresh_state(self) -> None:
        state = self._derive_state()
        if state != self._state:
            self._state = state
            self._notify("state")

    def _set_resource(self, res: ComputeResource | None, *, if_newer: bool = False) -> None:
        if if_newer and res is not None and self._resource is not None:
            old, new = self._resource.metadata.resource_version, res.metadata.resource_version
            if old and new and old.isdigit() and new.isdigit() and int(new) < int(old):
                self._refresh_state()  # the watch already delivered a later version than this reply
                return
        if res is not None:
            self._seen_resource = True
        self._resource = res
        self._notify("resource")
        self._refresh_state()

    @staticmethod
    def _is_ready_resource(res: ComputeResource | None) -> bool:
        """Ready=True, and not a stale condition from before the latest spec change."""
        if res is None:
            return False
        cond = res.condition(READY)
        if cond is None or not cond.is_true:
            return False
        generation = res.metadata.generation
        if cond.observed_generation is not None and generation is not None and cond.observed_generation < generation:
            return False
        return not res.is_suspended

    # ------------------------------------------------------------------ apply

    def _manifest(self, namespace: str) -> dict[str, Any]:
        spec = ComputeSpec(
            image=self._image,
            command=self._command,
            args=self._args,
            env=env_list(self._env),
            suspend=self._suspend,
            resources=self._resources,
        )
        return apply_manifest(self._name, namespace, spec, labels=self._labels, annotations=self._annotations)

    async def _initial_apply(self) -> None:
        self._applying = True
        try:
            backend = await _config.current_backend()
            self._backend = backend
            resource = await backend.apply(self._manifest(backend.namespace))
        except BaseException as exc:
            self._applying = False
            if isinstance(exc, Exception):
                self._apply_error = exc
            self._refresh_state()
            raise
        self._applying = False
        self._set_resource(resource, if_newer=True)

    async def _ensure_applied(self) -> Backend:
        """Await the constructor's apply (re-raising its error); returns the backend."""
        task = self._apply_task
        if task is not None:
            if not task.done():
                if task.get_loop() is asyncio.get_running_loop():
                    await asyncio.shield(task)
                else:  # started on a loop that is gone or elsewhere: apply again here (idempotent)
                    self._apply_task = None
                    await self._initial_apply()
            elif task.cancelled():
                self._apply_task = None
                await self._initial_apply()
        if self._apply_error is not None:
            raise self._apply_error
        if self._backend is None:  # constructed outside a loop whose apply was interrupted
            await self._initial_apply()
        assert self._backend is not None
        return self._backend

    async def _apply_spec(self) -> None:
        backend = await self._ensure_applied()
        self._applying = True
        self._refresh_state()
        try:
            resource = await backend.apply(self._manifest(backend.namespace))
        finally:
            self._applying = False
        self._set_resource(resource, if_newer=True)

    # ------------------------------------------------------------------ background watch and events

    def start_watching(self) -> bool:
        """Make sure the status watch and the event stream run on the current event loop (idempotent).

        Updates then arrive as pushes from the backend's watch (no polling), and
        :meth:`ready` uses this same watch. Returns ``False`` (and does nothing)
        when called with no running loop or after :meth:`delete`.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._deleted:
            return False
        for attr, factory in (("_watch_task", self._watch_loop), ("_events_task", self._events_loop)):
            task: asyncio.Task | None = getattr(self, attr)
            if task is not None and not task.done() and task.get_loop() is loop:
                continue
            if task is not None and not task.done():
                _cancel_elsewhere(task)
            if attr == "_watch_task":
                self._watch_synced = False
                self._watch_error = None
            new = loop.create_task(factory(), name=f"skytorch-{attr[1:-5]}-{self._name}")
            new.add_done_callback(_consume_task_error)
            setattr(self, attr, new)
        return True

    async def _watch_loop(self) -> None:
        try:
            backend = await self._ensure_applied()
        except Exception:
            return
        try:
            async for resource in backend.watch(self._name):
                self._watch_synced = True
                self._set_resource(resource)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("Watch of Compute %s failed: %s", self._who(), exc)
            self._watch_error = exc
            self._wake()

    async def _events_loop(self) -> None:
        try:
            backend = await self._ensure_applied()
        except Exception:
            return
        try:
            async for event in backend.events(self._name):
                key = event_key(event)
                if key in self._seen_events:
                    continue
                self._seen_events.add(key)
                self._recent_events.append(event)
                self._notify("event")
                if self._on_events is not None:
                    try:
                        result = self._on_events(event)
                        if inspect.isawaitable(result):
                            await result
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("on_events callback of Compute %s raised; the event stream goes on",
                                         self._who())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("Event stream of Compute %s failed: %s", self._who(), exc)

    async def _stop_background(self) -> None:
        tasks = [t for t in (self._watch_task, self._events_task) if t is not None]
        self._watch_task = self._events_task = None
        here = asyncio.get_running_loop()
        local = []
        for task in tasks:
            if task.done():
                continue
            if task.get_loop() is here:
                task.cancel()
                local.append(task)
            else:
                _cancel_elsewhere(task)
        if local:
            await asyncio.gather(*local, return_exceptions=True)

    # ------------------------------------------------------------------ lifecycle

    async def ready(self, timeout: float = 300) -> "Compute":
        """Wait until the ``Ready`` condition is ``True``, connect the tensor client, return ``self``.

        Watch-based: the backend's watch starts from a fresh read, so no transition
        is missed. Raises :class:`~skytorch.errors.ComputeTimeoutError` (a ``TimeoutError``)
        naming the Compute and its last conditions, or :class:`~skytorch.errors.ComputeError`
        when a local server failed.
        """
        backend = await self._ensure_applied()
        if self._suspend:
            raise ComputeNotReadyError(f"Compute {self._who()} is suspended: await compute.resume() to start it "
                                       "and wait until it is ready", compute=self._who())
        self.start_watching()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._watch_error is not None:
                        error, self._watch_error = self._watch_error, None
                        raise error
                    if self._deleted:
                        raise ComputeError(f"Compute {self._who()} was deleted", compute=self._who())
                    if self._watch_synced:
                        res = self._resource
                        if self._is_ready_resource(res):
                            break
                        if res is None and self._seen_resource:
                            raise ComputeError(f"Compute {self._who()} was deleted while waiting for it to be "
                                               "ready", compute=self._who())
                        if getattr(backend, "terminal_failures", False) and self._state == "Failed":
                            raise ComputeError(f"Compute {self._who()} failed: {self._describe()}",
                                               compute=self._who())
                    if self._watch_task is None or self._watch_task.done():
                        self.start_watching()
                    await self._wait_change()
        except TimeoutError:
            raise ComputeTimeoutError(
                f"Compute {self._who()} did not become ready within {timeout:g}s; last conditions: {self._describe()}",
                compute=self._who(),
            ) from None
        await self._connect(backend)
        return self

    def _describe(self) -> str:
        if self._resource is None:
            return "the resource was not seen yet"
        return self._resource.describe_conditions()

    async def _connect(self, backend: Backend) -> None:
        from skytorch.transport import TensorClient

        if self._host is not None:
            endpoint = (self._host, self._port)
        else:
            endpoint = backend.endpoint(self._name, self._port)
        if self._tensor_client is not None and self._endpoint == endpoint:
            return
        await self._close_client()
        self._tensor_client = TensorClient(endpoint[0], endpoint[1])
        self._endpoint = endpoint
        logger.debug("Compute %s: tensor client to %s:%d", self._who(), *endpoint)
        self._notify("resource")

    async def _close_client(self) -> None:
        client, self._tensor_client = self._tensor_client, None
        self._endpoint = None
        if client is not None:
            try:
                await client.close()
            except Exception:
                logger.debug("Closing the tensor client of %s failed", self._who(), exc_info=True)

    def is_ready(self) -> bool:
        """Whether the Compute is ready now (fetches its current status; sync, also inside a notebook)."""
        return run_sync(self._fetch_is_ready())

    async def _fetch_is_ready(self) -> bool:
        backend = await self._ensure_applied()
        resource = await backend.get(self._name)
        self._set_resource(resource, if_newer=True)
        return self._is_ready_resource(resource)

    async def suspend(self) -> None:
        """Close the tensor client and apply ``suspend: true`` (the Compute stays, its server stops)."""
        await self._ensure_applied()
        await self._close_client()
        self._suspend = True
        await self._apply_spec()

    async def resume(self, timeout: float = 300) -> "Compute":
        """Apply ``suspend: false`` and wait until ready again (see :meth:`ready`)."""
        await self._ensure_applied()
        self._suspend = False
        await self._apply_spec()
        return await self.ready(timeout=timeout)

    async def delete(self, grace_period_seconds: int = 30) -> None:
        """Stop the event stream, close the tensor client and delete the Compute.

        A Compute that is already gone is a warning, not an error.
        """
        if isinstance(grace_period_seconds, bool) or not isinstance(grace_period_seconds, int) \
                or grace_period_seconds < 0:
            raise ComputeSpecError(f"Compute {self._who()}: grace_period_seconds must be a non-negative integer, "
                                   f"got {grace_period_seconds!r}", compute=self._who())
        try:
            backend = await self._ensure_applied()
        except Exception:
            backend = self._backend
            if backend is None:  # nothing was ever created
                self._deleted = True
                self._refresh_state()
                return
        await self._stop_background()
        await self._close_client()
        existed = await backend.delete(self._name, grace_period_seconds)
        if not existed:
            logger.warning("Compute %s was not found when deleting it (already deleted)", self._who())
        self._deleted = True
        self._refresh_state()

    async def __aenter__(self) -> "Compute":
        try:
            return await self.ready()
        except BaseException:
            await _shielded(self.delete())
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        await _shielded(self.delete())

    # ------------------------------------------------------------------ tensors

    @property
    def tensor_client(self) -> Any:
        """The :class:`~skytorch.transport.TensorClient` once ready (``None`` before), e.g. for its iterator forms."""
        return self._tensor_client

    def _client_or_raise(self, what: str) -> Any:
        if self._tensor_client is None:
            raise ComputeNotReadyError(
                f"Compute {self._who()} is not ready ({self._state}): await compute.ready() "
                f"(or use 'async with') before {what}",
                compute=self._who(),
            )
        return self._tensor_client

    def _progress(self, direction: str, user: Callable[[int, int], Any] | None) -> Callable[[int, int], None]:
        transfer = Transfer(direction)
        self._transfer = transfer
        self._notify("transfer")

        def _callback(done: int, total: int) -> None:
            transfer.bytes_done, transfer.bytes_total = int(done), int(total)
            now = time.monotonic()
            if now - self._last_transfer_notify >= 0.1 or (total and done >= total):
                self._last_transfer_notify = now
                self._notify("transfer")
            if user is not None:
                user(done, total)

        return _callback

    def _finish_transfer(self) -> None:
        transfer = self._transfer
        if transfer is not None and not transfer.done:
            transfer.done = True
            transfer.finished = time.monotonic()
            self._notify("transfer")

    async def send_tensors(self, *tensors: Any, progress: Callable[[int, int], Any] | None = None,
                           ids: Sequence[str] | None = None) -> Any:
        """Send tensors to the server (client streaming); returns its response (``.success``, ``.message``,
        ``.tensor_ids``). ``ids`` names them on the server; ``progress(bytes_done, bytes_total)`` is called as
        bytes go out."""
        client = self._client_or_raise("send_tensors")
        try:
            return await client.send_tensors(*tensors, progress=self._progress("send", progress), ids=ids)
        finally:
            self._finish_transfer()

    async def receive_tensors(self, count: int = 1, parameters: Mapping[str, str] | None = None,
                              progress: Callable[[int, int], Any] | None = None) -> list[Any]:
        """Receive ``count`` tensors from the server (server streaming)."""
        client = self._client_or_raise("receive_tensors")
        try:
            return await client.receive_tensors(count=count, parameters=parameters,
                                                progress=self._progress("receive", progress))
        finally:
            self._finish_transfer()

    async def stream_tensors(self, *tensors: Any, progress: Callable[[int, int], Any] | None = None) -> list[Any]:
        """Send tensors and receive the server's results (bidirectional streaming)."""
        client = self._client_or_raise("stream_tensors")
        try:
            return await client.stream_tensors(*tensors, progress=self._progress("stream", progress))
        finally:
            self._finish_transfer()


def _consume_task_error(task: asyncio.Task) -> None:
    """Mark a background task's exception as retrieved (it is re-raised where it matters)."""
    if not task.cancelled():
        task.exception()


def _cancel_elsewhere(task: asyncio.Task) -> None:
    """Cancel a task that belongs to another (possibly closed) loop."""
    loop = task.get_loop()
    if loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:
        pass


async def _shielded(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` to the end even if the caller is cancelled meanwhile (cleanup must finish)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
