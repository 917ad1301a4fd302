"""Fixtures for the tensor transport: in-process servers, server processes, clients.

Also holds small StreamTensors handlers the server tests load by name
(``--handler tests.plugins.transport:double``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import pytest
import torch

from skytorch.server import Settings, TensorServer
from skytorch.transport import TensorClient

ROOT = pathlib.Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- handlers used by tests


def double(tensor: torch.Tensor, metadata: Mapping[str, str]) -> torch.Tensor:
    """Handler: 2 x tensor."""
    return tensor * 2


def fail_on_negative(tensor: torch.Tensor, metadata: Mapping[str, str]) -> torch.Tensor:
    """Handler: raises ValueError when the tensor has a negative element."""
    if bool((tensor < 0).any()):
        raise ValueError("negative values are not allowed")
    return tensor + 1


def slow(tensor: torch.Tensor, metadata: Mapping[str, str]) -> torch.Tensor:
    """Handler: touches ``$SKYTORCH_TEST_STARTED`` (if set), sleeps ``$SKYTORCH_TEST_SLEEP`` s (default 2), echoes."""
    marker = os.environ.get("SKYTORCH_TEST_STARTED")
    if marker:
        pathlib.Path(marker).touch()
    time.sleep(float(os.environ.get("SKYTORCH_TEST_SLEEP", "2")))
    return tensor


# --------------------------------------------------------------------------- in-process server


@pytest.fixture
async def tensor_server_factory() -> AsyncIterator[Callable[..., object]]:
    """Start TensorServers on 127.0.0.1:0 in this event loop; all are stopped at teardown."""
    started: list[TensorServer] = []

    async def start(handler: Callable[..., torch.Tensor] | None = None, **settings: object) -> TensorServer:
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)
        settings.setdefault("device", "cpu")
        settings.setdefault("grace_period", 2.0)
        server = TensorServer(Settings(**settings), handler=handler)  # type: ignore[arg-type]
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(0)


@pytest.fixture
async def tensor_server(tensor_server_factory: Callable[..., object]) -> TensorServer:
    """A TensorServer on 127.0.0.1 (identity handler, default limits)."""
    return await tensor_server_factory()  # type: ignore[misc,no-any-return]


@pytest.fixture
async def tensor_client(tensor_server: TensorServer) -> AsyncIterator[TensorClient]:
    """A TensorClient connected to ``tensor_server``; closed at teardown."""
    async with TensorClient("127.0.0.1", tensor_server.port) as client:
        yield client


# --------------------------------------------------------------------------- server processes


class ServerProcess:
    """A ``python -m skytorch.server`` child process; ``port`` read from its ready file."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None, tmp: pathlib.Path) -> None:
        self.ready_file = tmp / f"ready-{os.getpid()}-{time.monotonic_ns()}"
        self.stderr_path = tmp / f"stderr-{time.monotonic_ns()}.log"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skytorch.server", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
             "--ready-file", str(self.ready_file), *args],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=self._stderr,
        )
        self.port = 0

    def wait_ready(self, timeout: float = 60) -> int:
        """Block until the ready file appears; return the port (fails with the server's stderr)."""
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not become ready (rc={self.proc.poll()}): {self.stderr()}")
            time.sleep(0.02)
        host, _, port = self.ready_file.read_text().rpartition(":")
        assert host == "127.0.0.1"
        self.port = int(port)
        return self.port

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


@pytest.fixture
def server_process(tmp_path: pathlib.Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start ``python -m skytorch.server`` with extra args/env, wait until ready; stopped at teardown."""
    procs: list[ServerProcess] = []

    def start(*args: str, env: Mapping[str, str] | None = None, wait: bool = True) -> ServerProcess:
        proc = ServerProcess(list(args), env, tmp_path)
        procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop()
