"""The embedded local backend: each Compute is a ``python -m skytorch.server`` child process on loopback.

Used with ``SKYTORCH_BACKEND=local`` or when there is no Kubernetes configuration
at all. It plays the operator's part in-process, so :class:`skytorch.client.Compute`
has one code path for both backends:

- apply = start the server (or restart it when command, args, env or resources
  changed); ``suspend: true`` stops it (the Compute stays), ``suspend: false``
  starts it again;
- the ``Ready`` condition turns ``True`` once the server wrote its ``host:port``
  ready file and answers the gRPC health check with SERVING;
- delete = SIGTERM, then SIGKILL after the grace period;
- Events are synthesised as ``CoreV1Event`` objects with the operator's reasons
  (Created, Started, Ready, Suspended, Resumed, Killing; Warning Failed with the
  tail of the server's stderr when it dies);
- ``image`` is ignored (one log line); ``env``, ``command`` and ``args`` are honoured.

Children never outlive this process: each one asks the kernel for SIGKILL when
its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux), and is spawned from one
long-lived spawner thread because that signal fires when the forking *thread*
exits. On a normal interpreter exit an ``atexit`` hook stops them as well.

Everything here is loop-independent (``subprocess.Popen`` and threads), so the
methods may be called from different event loops one after another.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import ctypes
import datetime as _dt
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping

from skytorch.backends.base import Backend
from skytorch.errors import BackendError
from skytorch.resources import (
    API_VERSION,
    KIND,
    READY,
    SUSPENDED,
    ComputeResource,
    now_rfc3339,
)

logger = logging.getLogger(__name__)

#: Environment variables a custom ``command`` reads to know where to listen and
#: where to write ``host:port`` once serving (``python -m skytorch.server`` gets flags).
READY_FILE_ENV = "SKYTORCH_READY_FILE"
HOST_ENV = "SKYTORCH_HOST"
PORT_ENV = "SKYTORCH_PORT"
#: Set in every child to ``namespace/name`` of its Compute (how tests and tools recognise them).
COMPUTE_ENV = "SKYTORCH_LOCAL_COMPUTE"

#: ``0`` turns the fork server off (every server is then a fresh ``python -m skytorch.server``).
ZYGOTE_ENV = "SKYTORCH_LOCAL_ZYGOTE"
#: Environment variables read when torch or Python start: a server that sets one is not forked
#: from the warm fork server (whose interpreter and torch already started) but spawned afresh.
_STARTUP_ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "CUDA_", "NVIDIA_", "PYTORCH_", "TORCH_",
                         "LD_", "PYTHON", "MALLOC_", "HIP_", "ROCR_", "ZE_", "XPU_")

#: How long a server may take to become ready before the Compute is marked Failed.
DEFAULT_START_TIMEOUT = 120.0
#: Grace period when a server is stopped for a suspend or a restart.
DEFAULT_STOP_GRACE = 10.0
#: Bytes of the server's stderr quoted in a Failed event.
STDERR_TAIL_BYTES = 2000
#: How many Events are kept per Compute.
MAX_EVENTS = 200

_PR_SET_PDEATHSIG = 1
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child_pythonpath(current: str | None) -> str:
    """``PYTHONPATH`` for a child: this skytorch first when it runs from a source checkout (not installed)."""
    import site

    installed = {os.path.realpath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if os.path.realpath(_PACKAGE_ROOT) in installed:
        return current or ""
    return os.pathsep.join(p for p in (_PACKAGE_ROOT, current) if p)
_EVENT_SOURCE = "skytorch-local"


# --------------------------------------------------------------------------- spawning


def _make_preexec(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with SIGKILL when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None

    def _preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return _preexec


class _Spawner:
    """One long-lived thread that forks every child, so PR_SET_PDEATHSIG lasts as long as the process."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._requests = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="skytorch-local-spawner", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            fn, fut = self._requests.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen(*args, **kwargs)`` executed on the spawner thread."""
        self._ensure_thread()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.put((lambda: subprocess.Popen(*args, **kwargs), fut))
        return fut.result()


_spawner = _Spawner()


# --------------------------------------------------------------------------- model


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def push(self, item: Any) -> bool:
        """Hand ``item`` to the subscriber's loop; ``False`` once that loop is closed."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
            return True
        except RuntimeError:
            return False


@dataclass
class _Server:
    """One running ``python -m skytorch.server`` child."""

    proc: subprocess.Popen
    workdir: str
    ready_file: str
    log_path: str
    stopping: bool = False
    port: int | None = None
    started: float = field(default_factory=time.monotonic)

    def stderr_tail(self, limit: int = STDERR_TAIL_BYTES) -> str:
        """The last ``limit`` bytes the server wrote to stderr/stdout."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - limit))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""


@dataclass
class _Record:
    """What the local backend stores for one Compute (the emulated API object)."""

    name: str
    namespace: str
    uid: str
    created: str
    resource_version: int
    generation: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    server: _Server | None = None
    failed: bool = False
    deleting: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The object as the API would return it."""
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "resourceVersion": str(self.resource_version),
            "generation": self.generation,
            "creationTimestamp": self.created,
        }
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        status: dict[str, Any] = {}
        if self.conditions:
            status["conditions"] = [dict(c) for c in self.conditions.values()]
        if self.server is not None and self.server.port is not None:
            status["addresses"] = [{"type": "IPAddress", "value": "127.0.0.1"}]
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
                "spec": dict(self.spec), "status": status}

    def set_condition(self, type_: str, status: str, reason: str, message: str = "") -> None:
        """Set a condition, keeping ``lastTransitionTime`` when its status does not change."""
        old = self.conditions.get(type_)
        if old and old["status"] == status and old["reason"] == reason and old["message"] == message:
            return
        transition = old["lastTransitionTime"] if old and old["status"] == status else now_rfc3339()
        self.conditions[type_] = {
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": transition, "observedGeneration": self.generation,
        }


def _runtime_spec(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a spec that need a server restart when they change."""
    env = tuple((e.get("name"), e.get("value")) for e in spec.get("env") or [])
    resources = tuple(sorted((spec.get("resources") or {}).items()))
    return (tuple(spec.get("command") or ()), tuple(spec.get("args") or ()), env, resources)


# --------------------------------------------------------------------------- backend


class LocalBackend(Backend):
    """Computes as tensor-server child processes on 127.0.0.1 (the embedded default backend)."""

    kind = "local"
    #: A failed local server does not come back by itself: ``ready()`` fails at once.
    terminal_failures = True

    def __init__(self, namespace: str = "default", *, python: str = sys.executable,
                 start_timeout: float = DEFAULT_START_TIMEOUT, stop_grace: float = DEFAULT_STOP_GRACE,
                 use_zygote: bool | None = None) -> None:
        self.namespace = namespace
        #: Fork default servers from a warm fork server (Linux; ``SKYTORCH_LOCAL_ZYGOTE=0`` turns it off).
        self.use_zygote = (sys.platform.startswith("linux") and os.environ.get(ZYGOTE_ENV, "1") != "0"
                           if use_zygote is None else use_zygote)
        self._zygote_proc: _Zygote | None = None
        self._prewarm = self.use_zygote  # start the fork server with the first apply, while it is busy elsewhere
        self.python = python
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._events: dict[str, list[Any]] = {}
        self._watchers: dict[str, list[_Subscriber]] = {}
        self._event_watchers: dict[str, list[_Subscriber]] = {}
        self._rv = 0
        self._image_logged = False
        self._closed = False
        _live_backends.add(self)

    # ------------------------------------------------------------------ helpers

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _who(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def _publish(self, name: str) -> None:
        """Push the Compute's current state to every watcher (call with the lock held)."""
        rec = self._records.get(name)
        item = ComputeResource.from_dict(rec.to_dict()) if rec is not None else None
        subs = self._watchers.get(name, [])
        subs[:] = [s for s in subs if s.push(item)]

    def _changed(self, rec: _Record) -> None:
        rec.resource_version = self._next_rv()
        self._publish(rec.name)

    def _emit(self, rec: _Record, reason: str, message: str, type_: str = "Normal") -> None:
        """Synthesise a ``CoreV1Event`` about ``rec`` and hand it to every event stream (lock held)."""
        CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference = _event_models()

        now = _dt.datetime.now(_dt.timezone.utc)
        event = CoreV1Event(
            api_version="v1",
            kind="Event",
            metadata=V1ObjectMeta(
                name=f"{rec.name}.{uuid.uuid4().hex[:16]}",
                namespace=rec.namespace,
                uid=str(uuid.uuid4()),
                resource_version=str(self._next_rv()),
                creation_timestamp=now,
            ),
            involved_object=V1ObjectReference(
                api_version=API_VERSION, kind=KIND, name=rec.name, namespace=rec.namespace, uid=rec.uid,
                resource_version=str(rec.resource_version),
            ),
            reason=reason,
            message=message,
            type=type_,
            count=1,
            first_timestamp=now,
            last_timestamp=now,
            source=V1EventSource(component=_EVENT_SOURCE, host="localhost"),
            reporting_component=_EVENT_SOURCE,
            reporting_instance="localhost",
        )
        events = self._events.setdefault(rec.name, [])
        events.append(event)
        del events[:-MAX_EVENTS]
        subs = self._event_watchers.get(rec.name, [])
        subs[:] = [s for s in subs if s.push(event)]
        log = logger.warning if type_ == "Warning" else logger.debug
        log("Compute %s: %s %s: %s", self._who(rec.name), type_, reason, message)

    # ------------------------------------------------------------------ processes

    def _command(self, rec: _Record, ready_file: str) -> tuple[list[str], dict[str, str], list[str] | None]:
        """``(argv, env, server_args)``; ``server_args`` is set when the default server command runs."""
        spec = rec.spec
        env = dict(os.environ)
        env.update({e["name"]: str(e.get("value", "")) for e in spec.get("env") or [] if "name" in e})
        env[READY_FILE_ENV] = ready_file
        env[HOST_ENV] = "127.0.0.1"
        env[PORT_ENV] = "0"
        env[COMPUTE_ENV] = self._who(rec.name)
        for key, value in (spec.get("resources") or {}).items():  # visible to the server, like a pod's limits
            env[f"SKYTORCH_RESOURCE_{key.upper().replace('.', '_').replace('/', '_').replace('-', '_')}"] = str(value)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The child imports this very skytorch, also when it is not installed (a source checkout).
        env["PYTHONPATH"] = _child_pythonpath(env.get("PYTHONPATH"))
        command = list(spec.get("command") or [])
        args = [str(a) for a in spec.get("args") or []]
        if command:
            if command[0] in ("python", "python3"):  # the image's python is this interpreter locally
                command[0] = self.python
            return command + args, env, None
        server_args = ["--host", "127.0.0.1", "--port", "0", "--ready-file", ready_file,
                       "--grace-period", str(self.stop_grace), *args]
        return [self.python, "-m", "skytorch.server", *server_args], env, server_args

    def _spawn(self, argv: list[str], env: dict[str, str], server_args: list[str] | None, log_path: str) -> Any:
        """Start one server (blocking: call it off the event loop); returns a Popen-like process."""
        if server_args is not None and self.use_zygote and _zygote_safe(env):
            return self._zygote().fork(server_args, env, log_path)
        with open(log_path, "ab") as log_fh:
            return _spawner.popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                preexec_fn=_make_preexec(os.getpid()), start_new_session=True, close_fds=True,
            )

    def _zygote(self) -> "_Zygote":
        with self._lock:
            if self._zygote_proc is None or not self._zygote_proc.alive:
                self._zygote_proc = _Zygote(self.python)
            return self._zygote_proc

    async def _start(self, rec: _Record) -> None:
        """Start the server of ``rec`` off the event loop; a monitor thread then watches it."""
        with self._lock:
            workdir = tempfile.mkdtemp(prefix=f"skytorch-local-{rec.name}-")
            ready_file = os.path.join(workdir, "ready")
            log_path = os.path.join(workdir, "server.log")
            argv, env, server_args = self._command(rec, ready_file)
        try:
            proc = await asyncio.to_thread(self._spawn, argv, env, server_args, log_path)
        except (OSError, BackendError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            with self._lock:
                rec.failed = True
                rec.set_condition(READY, "False", "Failed", f"cannot start {argv[0]!r}: {exc}")
                self._emit(rec, "Failed", f"Cannot start the tensor server {argv!r}: {exc}", "Warning")
                self._changed(rec)
            return
        server = _Server(proc=proc, workdir=workdir, ready_file=ready_file, log_path=log_path)
        with self._lock:
            stale = (self._records.get(rec.name) is not rec or rec.deleting or rec.server is not None
                     or bool(rec.spec.get("suspend")) or self._closed)
            if not stale:
                rec.server = server
                rec.failed = False
                rec.set_condition(READY, "False", "Starting", f"tensor server process {proc.pid} is starting")
                self._emit(rec, "Started", f"Started tensor server process {proc.pid} on 127.0.0.1")
                self._changed(rec)
        if stale:  # deleted, suspended or started by someone else meanwhile
            await asyncio.to_thread(self._terminate, server, 0)
            return
        logger.info("Compute %s: started local tensor server (pid %d, log %s)", self._who(rec.name), proc.pid, log_path)
        threading.Thread(target=self._monitor, args=(rec.name, server), daemon=True,
                         name=f"skytorch-local-monitor-{rec.name}").start()

    def _monitor(self, name: str, server: _Server) -> None:
        """Thread: wait for the ready file and a SERVING health check, then for the process to exit."""
        proc = server.proc
        deadline = time.monotonic() + self.start_timeout
        port: int | None = None
        delay = 0.002
        while port is None and not server.stopping:
            if proc.poll() is not None:
                break
            try:
                with open(server.ready_file) as fh:
                    text = fh.read().strip()
                if text:
                    port = int(text.rsplit(":", 1)[1])
                    break
            except (OSError, ValueError, IndexError):
                pass
            if time.monotonic() > deadline:
                self._fail(name, server, f"the tensor server did not become ready within {self.start_timeout:.0f}s")
                self._terminate(server, self.stop_grace)
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)
        if port is not None and not server.stopping:
            serving = _health_check("127.0.0.1", port)
            with self._lock:
                rec = self._records.get(name)
                if rec is not None and rec.server is server and not server.stopping and proc.poll() is None:
                    if serving:
                        server.port = port
                        rec.set_condition(READY, "True", "ServerReady", f"tensor server serving on 127.0.0.1:{port}")
                        self._emit(rec, "Ready", f"Tensor server is serving on 127.0.0.1:{port}")
                        self._changed(rec)
                    else:
                        self._fail(name, server, f"the tensor server on 127.0.0.1:{port} is not SERVING")
                        self._terminate(server, self.stop_grace)
                        return
        code = proc.wait()
        if not server.stopping:
            self._fail(name, server, f"the tensor server process {proc.pid} exited with code {code}")

    def _fail(self, name: str, server: _Server, what: str) -> None:
        tail = server.stderr_tail()
        message = what + (f"; last output:\n{tail}" if tail else "")
        with self._lock:
            rec = self._records.get(name)
            if rec is None or rec.server is not server or server.stopping:
                return
            rec.failed = True
            server.port = None
            rec.set_condition(READY, "False", "Failed", message[-STDERR_TAIL_BYTES:])
            self._emit(rec, "Failed", message, "Warning")
            self._changed(rec)

    @staticmethod
    def _terminate(server: _Server, grace: float) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; blocks until the process is gone."""
        server.stopping = True
        proc = server.proc
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=max(grace, 0))
            except subprocess.TimeoutExpired:
                logger.warning("Tensor server %d did not stop within %.0fs of SIGTERM: killing it", proc.pid, grace)
                proc.kill()
                proc.wait()
            except ProcessLookupError:  # pragma: no cover - raced with its exit
                pass
        shutil.rmtree(server.workdir, ignore_errors=True)
        return proc.returncode

    async def _stop(self, rec: _Record, grace: float, reason_message: str) -> None:
        server = rec.server
        if server is None:
            return
        with self._lock:
            server.stopping = True
            self._emit(rec, "Killing", f"Stopping tensor server process {server.proc.pid}: {reason_message}")
        await asyncio.to_thread(self._terminate, server, grace)
        with self._lock:
            if rec.server is server:
                rec.server = None

    # ------------------------------------------------------------------ Backend API

    async def apply(self, manifest: Mapping[str, Any]) -> ComputeResource:
        """Create or update a Compute: start, restart, stop or resume its server as the spec says."""
        if self._closed:
            raise BackendError("the local backend was shut down")
        if self._prewarm:
            self._prewarm = False
            await asyncio.to_thread(self._zygote)  # its imports overlap with the one below
        if _EVENT_MODELS is None:  # a second-long import: not on the event loop
            await asyncio.to_thread(_event_models)
        metadata = manifest.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise BackendError("apply: the manifest has no metadata.name")
        spec = dict(manifest.get("spec") or {})
        if not spec:
            raise BackendError(f"Compute {self._who(name)}: spec must have at least one property")
        if spec.get("image") and not self._image_logged:
            self._image_logged = True
            logger.info("The local backend ignores container images (Compute %s asked for %r): "
                        "servers run with this Python", self._who(name), spec["image"])
        with self._lock:
            rec = self._records.get(name)
            before: dict[str, Any] | None = None
            if rec is None or rec.deleting:
                rec = _Record(name=name, namespace=self.namespace, uid=str(uuid.uuid4()), created=now_rfc3339(),
                              resource_version=self._next_rv(), spec=spec)
                self._records[name] = rec
                self._emit(rec, "Created", f"Created Compute {name} on the local backend")
                spec_changed, was_suspended = True, False
            else:
                before = rec.to_dict()
                spec_changed = _runtime_spec(rec.spec) != _runtime_spec(spec)
                was_suspended = bool(rec.spec.get("suspend"))
                if rec.spec != spec:
                    rec.generation += 1
                rec.spec = spec
            rec.labels = dict(metadata.get("labels") or {})
            rec.annotations = dict(metadata.get("annotations") or {})
            stop_reason: str | None = None
            start = False
            if spec.get("suspend"):
                rec.set_condition(SUSPENDED, "True", "Suspended", "the tensor server is stopped")
                rec.set_condition(READY, "False", "Suspended", "the Compute is suspended")
                rec.failed = False
                if rec.server is not None:
                    stop_reason = "the Compute is suspended"
                if not was_suspended:
                    self._emit(rec, "Suspended", f"Compute {name} suspended: its tensor server is stopped")
            else:
                if was_suspended:
                    rec.set_condition(SUSPENDED, "False", "Resumed", "the tensor server runs")
                    self._emit(rec, "Resumed", f"Compute {name} resumed: its tensor server starts again")
                if rec.server is not None:
                    if spec_changed:
                        stop_reason = "its spec changed: restarting it"
                        rec.set_condition(READY, "False", "Restarting", "the spec changed: restarting the server")
                        start = True
                else:
                    # A server that failed with this very spec is not retried by re-applying it unchanged.
                    start = not (rec.failed and not spec_changed and not was_suspended)
            if before is None or rec.to_dict() != before:
                self._changed(rec)
        if stop_reason is not None:
            await self._stop(rec, self.stop_grace, stop_reason)
        if start and self._records.get(name) is rec and rec.server is None and not rec.spec.get("suspend"):
            await self._start(rec)
        with self._lock:
            current = self._records.get(name)
            if current is None:
                raise BackendError(f"Compute {self._who(name)} was deleted while it was being applied")
            return ComputeResource.from_dict(current.to_dict())

    async def get(self, name: str) -> ComputeResource | None:
        """The Compute as stored now, or ``None``."""
        with self._lock:
            rec = self._records.get(name)
            return ComputeResource.from_dict(rec.to_dict()) if rec is not None else None

    async def list(self, label_selector: str | None = None) -> list[ComputeResource]:
        """Every local Compute, optionally filtered by ``k=v,k2=v2`` (``k`` alone: the label exists)."""
        wanted: list[tuple[str, str | None]] = []
        for part in (label_selector or "").split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                key, value = part.split("=", 1)
                wanted.append((key.rstrip("=").strip(), value.strip()))
            else:
                wanted.append((part, None))
        with self._lock:
            records = [r for r in self._records.values() if not r.deleting]
            out = []
            for rec in records:
                if all((k in rec.labels) if v is None else rec.labels.get(k) == v for k, v in wanted):
                    out.append(ComputeResource.from_dict(rec.to_dict()))
            return sorted(out, key=lambda r: r.metadata.name)

    async def watch(self, name: str) -> AsyncIterator[ComputeResource | None]:  # type: ignore[override]
        """The Compute now, then after each change (``None`` once deleted); runs until the caller stops."""
        sub = _Subscriber(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            self._watchers.setdefault(name, []).append(sub)
            rec = self._records.get(name)
            first = ComputeResource.from_dict(rec.to_dict()) if rec is not None else None
        try:
            yield first
            while True:
                yield await sub.queue.get()
        finally:
            with self._lock:
                subs = self._watchers.get(name, [])
                if sub in subs:
                    subs.remove(sub)

    async def events(self, name: str) -> AsyncIterator[Any]:  # type: ignore[override]
        """The Compute's synthesised events so far, then new ones as they happen."""
        sub = _Subscriber(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            self._event_watchers.setdefault(name, []).append(sub)
            existing = list(self._events.get(name, []))
        try:
            for event in existing:
                yield event
            while True:
                yield await sub.queue.get()
        finally:
            with self._lock:
                subs = self._event_watchers.get(name, [])
                if sub in subs:
                    subs.remove(sub)

    async def delete(self, name: str, grace_period_seconds: int = 30) -> bool:
        """Stop the server (SIGTERM, SIGKILL after the grace period) and forget the Compute."""
        with self._lock:
            rec = self._records.get(name)
            if rec is None or rec.deleting:
                return False
            rec.deleting = True
        if rec.server is not None:
            await self._stop(rec, float(grace_period_seconds),
                             f"the Compute is being deleted (grace period {grace_period_seconds}s)")
        with self._lock:
            if self._records.get(name) is rec:
                del self._records[name]
            self._events.pop(name, None)
            self._publish(name)
        return True

    def endpoint(self, name: str, port: int) -> tuple[str, int]:
        """``("127.0.0.1", port the server bound)``; the ``port`` argument does not apply locally."""
        with self._lock:
            rec = self._records.get(name)
            server = rec.server if rec is not None else None
            if server is None or server.port is None:
                raise BackendError(f"Compute {self._who(name)} has no running tensor server on this machine")
            return "127.0.0.1", server.port

    def pids(self) -> dict[str, int]:
        """Process ids of the running servers by Compute name (for tests and diagnostics)."""
        with self._lock:
            return {n: r.server.proc.pid for n, r in self._records.items() if r.server is not None}

    def shutdown(self, grace: float = 2.0) -> None:
        """Stop every server now (blocking): used at interpreter exit and by tests."""
        with self._lock:
            self._closed = True
            servers = [r.server for r in self._records.values() if r.server is not None]
            self._records.clear()
            self._events.clear()
        for server in servers:
            server.stopping = True
            if server.proc.poll() is None:
                try:
                    server.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:  # pragma: no cover
                    pass
        deadline = time.monotonic() + grace
        for server in servers:
            try:
                server.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
            shutil.rmtree(server.workdir, ignore_errors=True)
        zygote, self._zygote_proc = self._zygote_proc, None
        if zygote is not None:
            zygote.close()


_EVENT_MODELS: tuple[Any, ...] | None = None


def _event_models() -> tuple[Any, ...]:
    """``kubernetes_asyncio``'s Event model classes (imported once; the import takes about a second)."""
    global _EVENT_MODELS
    if _EVENT_MODELS is None:
        from kubernetes_asyncio.client.models import CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference

        _EVENT_MODELS = (CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference)
    return _EVENT_MODELS


def _zygote_safe(env: Mapping[str, str]) -> bool:
    """Whether a server with ``env`` may be forked from the fork server (no start-up setting differs)."""
    base = os.environ
    for key in set(env) | set(base):
        if key.startswith(_STARTUP_ENV_PREFIXES) and key != "PYTHONPATH" and env.get(key) != base.get(key):
            return False
    return True


class _ZygoteChild:
    """A server forked by the fork server: the part of ``subprocess.Popen`` the backend uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _set_exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        """The exit code, or ``None`` while it runs."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (``subprocess.TimeoutExpired`` after ``timeout``); return the exit code."""
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` unless it already exited."""
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)


class _Zygote:
    """The fork server process (:mod:`skytorch.backends._local_zygote`) and the thread reading its answers."""

    def __init__(self, python: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _child_pythonpath(env.get("PYTHONPATH"))
        env[COMPUTE_ENV] = "fork-server"
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = tempfile.NamedTemporaryFile(prefix="skytorch-local-forkserver-", suffix=".log", delete=False)
        self.proc = _spawner.popen(
            [python, "-m", "skytorch.backends._local_zygote"], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, preexec_fn=_make_preexec(os.getpid()),
            start_new_session=True, close_fds=True,
        )
        self._log.close()
        self.alive = True
        self.failure = ""
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._children: dict[int, _ZygoteChild] = {}
        self._early_exits: dict[int, int] = {}
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True, name="skytorch-local-forkserver").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                if "ready" in message:
                    self._ready.set()
                elif "exit" in message:
                    child = self._children.pop(message["exit"], None)
                    if child is not None:
                        child._set_exit(int(message["code"]))
                    else:
                        self._early_exits[message["exit"]] = int(message["code"])
                elif "id" in message:
                    fut = self._pending.pop(message["id"], None)
                    if fut is not None:
                        fut.set_result(message)
        code = self.proc.wait()
        with self._lock:  # the fork server is gone, and its servers with it (PR_SET_PDEATHSIG)
            self.alive = False
            self.failure = f"the local fork server exited with code {code}" + (
                f"; last output:\n{tail}" if (tail := self.stderr_tail()) else "")
            for child in self._children.values():
                child._set_exit(-signal.SIGKILL)
            self._children.clear()
            for fut in self._pending.values():
                fut.set_exception(BackendError(self.failure))
            self._pending.clear()

    def stderr_tail(self, limit: int = STDERR_TAIL_BYTES) -> str:
        """The last ``limit`` bytes the fork server wrote to stderr."""
        try:
            with open(self._log.name, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def fork(self, args: list[str], env: dict[str, str], log_path: str, timeout: float = 120.0) -> _ZygoteChild:
        """Fork one server (blocking until the fork server answered)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if not self.alive:
                raise BackendError(self.failure or "the local fork server exited")
            self._next_id += 1
            request_id = self._next_id
            self._pending[request_id] = fut
            line = json.dumps({"id": request_id, "args": args, "env": env, "log": log_path}) + "\n"
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self._pending.pop(request_id, None)
                raise BackendError(self.failure or f"the local fork server is gone: {exc}") from None
        try:
            answer = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise BackendError(f"the local fork server did not answer within {timeout:.0f}s") from None
        if "error" in answer:
            raise BackendError(f"the local fork server could not fork: {answer['error']}")
        child = _ZygoteChild(int(answer["pid"]))
        with self._lock:
            if child.pid in self._early_exits:
                child._set_exit(self._early_exits.pop(child.pid))
            elif self.alive:
                self._children[child.pid] = child
            else:
                child._set_exit(-signal.SIGKILL)
        return child

    def close(self, grace: float = 3.0) -> None:
        """Close its stdin (it stops its servers and exits), then make sure it is gone."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass


def _health_check(host: str, port: int, timeout: float = 10.0) -> bool:
    """Whether the tensor server at ``host:port`` answers the gRPC health check with SERVING."""
    from skytorch.transport import TensorClient

    async def _check() -> bool:
        client = TensorClient(host, port)
        try:
            return bool(await asyncio.wait_for(client.health(), timeout))
        finally:
            await client.close()

    try:
        with asyncio.Runner() as runner:  # not asyncio.run: nest_asyncio (notebooks) patches that one
            return runner.run(_check())
    except Exception:
        logger.debug("Health check of %s:%d failed", host, port, exc_info=True)
        return False


_live_backends: "weakref.WeakSet[LocalBackend]" = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:  # pragma: no cover - runs at interpreter exit
    for backend in list(_live_backends):
        try:
            backend.shutdown()
        except Exception:
            pass
