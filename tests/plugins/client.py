"""Fixtures of the client and local-backend tests.

- ``client_env``: a clean client configuration (``skytorch.client._config`` reset
  before and after), no Kubernetes configuration reachable (``KUBECONFIG`` and
  ``HOME`` point into the test's tmp dir, no service account), and afterwards a
  check that no tensor-server child process outlived the test.
- ``local_client``: ``client_env`` with ``SKYTORCH_BACKEND=local``.
- ``local_backend``: a bare :class:`~skytorch.backends.local.LocalBackend`, shut down afterwards.
"""

from __future__ import annotations

import os
import pathlib
import textwrap
import time
from typing import Iterator

import psutil
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def server_children(*, include_fork_server: bool = False) -> list[psutil.Process]:
    """Live processes this test process started through a local backend (marked by their environment).

    The backend's fork server is left out unless ``include_fork_server``; the servers it forked are in.
    """
    me = os.getpid()
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            marker = proc.environ().get("SKYTORCH_LOCAL_COMPUTE")
            if marker is None:
                continue
            if marker == "fork-server" and proc.ppid() == me and not include_fork_server:
                continue
            out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def assert_no_leaked_servers(timeout: float = 10.0) -> None:
    """Fail if a server (or fork server) started by this process is still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    leaked = server_children(include_fork_server=True)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = server_children(include_fork_server=True)
    if leaked:
        for proc in leaked:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        raise AssertionError(f"tensor server processes leaked: {[p.pid for p in leaked]}")


def python_command(code: str) -> list[str]:
    """A Compute ``command`` running ``code`` with the test's interpreter (``python`` maps to it locally)."""
    return ["python", "-c", textwrap.dedent(code)]


#: A custom command that records its environment and argv, then runs the real server
#: (which reads SKYTORCH_HOST/PORT/READY_FILE from the environment the local backend sets).
RECORD_THEN_SERVE = """
import json, os, runpy, sys
with open(os.environ["RECORD_TO"], "w") as fh:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, fh)
sys.argv = ["skytorch.server"]
runpy.run_module("skytorch.server", run_name="__main__")
"""


@pytest.fixture
def client_env(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """A fresh client configuration with no Kubernetes configuration in reach; checks for leaks after."""
    from skytorch.client import _config

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("SKYTORCH_BACKEND", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    try:
        from skytorch.backends import kubernetes as kube_backend
    except ImportError:
        kube_backend = None
    for attr in ("SERVICE_ACCOUNT_DIR", "SA_DIR", "SERVICE_ACCOUNT_PATH"):
        if kube_backend is not None and hasattr(kube_backend, attr):
            monkeypatch.setattr(kube_backend, attr, str(tmp_path / "no-serviceaccount"))
    _config._reset_for_tests()
    try:
        yield tmp_path
    finally:
        _config._reset_for_tests()
        assert_no_leaked_servers()


@pytest.fixture
def local_client(client_env: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """``client_env`` on the embedded local backend (``SKYTORCH_BACKEND=local``)."""
    monkeypatch.setenv("SKYTORCH_BACKEND", "local")
    return client_env


@pytest.fixture
def local_backend() -> Iterator["object"]:
    """A bare LocalBackend in namespace ``default``; every server it started is stopped afterwards."""
    from skytorch.backends.local import LocalBackend

    backend = LocalBackend(namespace="default", stop_grace=5.0)
    try:
        yield backend
    finally:
        backend.shutdown()
        assert_no_leaked_servers()


@pytest.fixture
def repo_env() -> dict[str, str]:
    """Environment for helper processes: this repo importable, the local backend."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["SKYTORCH_BACKEND"] = "local"
    env.pop("KUBECONFIG", None)
    return env


__all__ = ["RECORD_THEN_SERVE", "assert_no_leaked_servers", "python_command", "server_children"]
