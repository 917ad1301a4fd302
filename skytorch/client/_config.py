"""Process-wide client configuration: :func:`init`, auto-initialisation and the backend in use.

Order of precedence (explicit arguments first, then ``SKYTORCH_*`` variables, then defaults):

1. ``init(client_config=...)``: that Kubernetes configuration.
2. ``SKYTORCH_BACKEND=local``: the embedded local backend; ``SKYTORCH_BACKEND=kubernetes``:
   Kubernetes, and an error if no configuration is found.
3. Otherwise kubeconfig (``KUBECONFIG`` or ``~/.kube/config``, current context),
   then the in-cluster service account.
4. No Kubernetes configuration at all: the local backend, announced once in a log line.

Namespace: the ``init`` argument, else the kubeconfig context's, else the service
account's, else ``default``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

from skytorch.backends.base import Backend
from skytorch.client._sync import register_loop_closer
from skytorch.errors import BackendError

logger = logging.getLogger(__name__)

#: Environment variable choosing the backend: ``kubernetes``, ``local`` (or unset/``auto``).
BACKEND_ENV = "SKYTORCH_BACKEND"

_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

_lock = threading.Lock()
_initialized = False
_client_config: Any = None
_namespace: str | None = None
_backend: Backend | None = None
_local_announced = False


def init(client_config: Any = None, namespace: str | None = None) -> None:
    """Configure the client once, before any Compute is created (optional).

    ``client_config`` is a ``kubernetes_asyncio.client.Configuration``, or the sync
    ``kubernetes.client.Configuration`` (its host, auth and TLS settings are copied).
    ``namespace`` is used for every Compute; by default it is auto-detected.

    Raises ``RuntimeError`` if called twice, or after the client auto-initialised
    (which happens when the first Compute is created).
    """
    global _initialized, _client_config, _namespace
    if namespace is not None and (not isinstance(namespace, str) or len(namespace) > 63
                                  or not _NAMESPACE_RE.match(namespace)):
        raise ValueError(f"init(namespace={namespace!r}): not a valid Kubernetes namespace name "
                         "(lowercase letters, digits and '-', at most 63 characters)")
    with _lock:
        if _initialized:
            raise RuntimeError(
                "skytorch.client.init() can only be called once, before any Compute is created: "
                "the client is already initialised (by an earlier init() or automatically by the first Compute)"
            )
        _initialized = True
        _client_config = client_config
        _namespace = namespace


def mark_initialized() -> None:
    """Auto-initialisation: from now on :func:`init` raises ``RuntimeError``."""
    global _initialized
    with _lock:
        _initialized = True


def configured_namespace() -> str | None:
    """The namespace in use if already known (given to ``init`` or resolved), else ``None``."""
    if _backend is not None:
        return _backend.namespace
    return _namespace


def resolved_backend() -> Backend | None:
    """The backend if it has been resolved already (no I/O)."""
    return _backend


async def current_backend() -> Backend:
    """The Backend every Compute of this process uses, resolving it on first use (async).

    From sync code: ``skytorch.client._sync.run_sync(current_backend())``.
    """
    global _backend
    if _backend is not None:
        return _backend
    mark_initialized()
    backend = await _resolve()
    with _lock:
        if _backend is None:
            _backend = backend
            backend = None  # type: ignore[assignment]
    if backend is not None:  # another task resolved concurrently: keep the first one
        await backend.close()
    return _backend  # type: ignore[return-value]


def _local_backend(namespace: str | None) -> Backend:
    from skytorch.backends.local import LocalBackend

    return LocalBackend(namespace=namespace or "default")


async def _resolve() -> Backend:
    global _local_announced
    choice = os.environ.get(BACKEND_ENV, "").strip().lower()
    if choice not in ("", "auto", "kubernetes", "local"):
        raise BackendError(f"{BACKEND_ENV}={choice!r} is not a backend: use 'kubernetes' or 'local' (or leave it unset)")
    if choice == "local" and _client_config is None:
        logger.info("Computes run as local server processes (%s=local)", BACKEND_ENV)
        return _local_backend(_namespace)

    from skytorch.backends.kubernetes import resolve_kubernetes

    backend = await resolve_kubernetes(_client_config, _namespace)
    if backend is not None:
        register_loop_closer(backend.close)
        return backend
    if choice == "kubernetes":
        raise BackendError(
            f"{BACKEND_ENV}=kubernetes but no Kubernetes configuration was found "
            "(KUBECONFIG, ~/.kube/config or an in-cluster service account); "
            f"unset {BACKEND_ENV} to run Computes locally"
        )
    if not _local_announced:
        _local_announced = True
        logger.info("No Kubernetes configuration found: Computes run as local server processes on this machine "
                       "(set %s=kubernetes to require a cluster)", BACKEND_ENV)
    return _local_backend(_namespace)


def _reset_for_tests() -> None:
    """Forget the configuration and stop every local server (tests only)."""
    global _initialized, _client_config, _namespace, _backend, _local_announced
    with _lock:
        backend, _backend = _backend, None
        _initialized = False
        _client_config = None
        _namespace = None
        _local_announced = False
    shutdown = getattr(backend, "shutdown", None)
    if shutdown is not None:
        shutdown()
