"""Fixtures and helpers of the notebook tests: real kernels, nbclient, JupyterLab + Chromium.

- :class:`KernelSession`: a real IPython kernel (jupyter_client ``KernelManager``)
  started with the project's interpreter, whose cells return their outputs.
- :func:`run_notebook`: executes a notebook headless with nbclient, failing on any cell error.
- :class:`JupyterLabServer`: JupyterLab on 127.0.0.1 with a token and a temporary root.
- :func:`launch_chromium`: Debian's Chromium through Playwright (never a downloaded browser).

Every kernel, server and browser started here is stopped by the fixture or the
context manager that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import queue
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
ARTIFACTS = REPO / "artifacts"
CHROMIUM = os.environ.get("SKYTORCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kernel_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    """Environment of a test kernel: the local backend unless told otherwise, the repo importable."""
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    env.update(
        SKYTORCH_BACKEND="local",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        MPLBACKEND="agg",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    env.update(extra)
    return env


@dataclass
class CellResult:
    """What one executed cell produced."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        """Everything printed to stdout."""
        return "".join(o["text"] for o in self.outputs if o.get("name") == "stdout")

    @property
    def stderr(self) -> str:
        """Everything printed to stderr."""
        return "".join(o["text"] for o in self.outputs if o.get("name") == "stderr")

    def data(self, mime: str) -> list[Any]:
        """Every display/execute_result payload of that MIME type."""
        return [o["data"][mime] for o in self.outputs if mime in o.get("data", {})]

    def text(self) -> str:
        """All text of the outputs (streams and text/plain)."""
        return self.stdout + self.stderr + "\n".join(self.data("text/plain"))

    def value(self) -> str:
        """The ``text/plain`` of the cell's result (its last expression)."""
        values = [o["data"]["text/plain"] for o in self.outputs if "execution_count" in o]
        return values[-1] if values else ""


class KernelSession:
    """A real IPython kernel run by jupyter_client, on the project's interpreter."""

    def __init__(self, env: dict[str, str], cwd: str | os.PathLike[str]) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.pid: int = self.km.provisioner.process.pid  # type: ignore[union-attr]
        self.kernel_id = pathlib.Path(self.km.connection_file).stem.removeprefix("kernel-")

    def execute(self, code: str, timeout: float = 180, allow_error: bool = False) -> CellResult:
        """Run ``code`` as a cell and return its outputs; raise on a cell error unless ``allow_error``."""
        msg_id = self.kc.execute(code)
        result = CellResult()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell did not finish in {timeout}s:\n{code}\noutputs so far: {result.outputs}")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(remaining, 5))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind in ("stream", "display_data", "execute_result", "update_display_data"):
                result.outputs.append(content)
            elif kind == "error":
                result.error = content
        while True:  # the execute_reply (payloads such as the pager of ``%magic?``)
            try:
                msg = self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg["parent_header"].get("msg_id") == msg_id:
                result.reply = msg["content"]
                break
        if result.error and not allow_error:
            raise AssertionError(
                f"cell failed: {result.error['ename']}: {result.error['evalue']}\n"
                + "\n".join(result.error.get("traceback", []))
                + f"\n--- code ---\n{code}"
            )
        return result

    def shutdown(self) -> None:
        """A clean shutdown_request, as Jupyter sends it (waits for the process to exit)."""
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)

    def kill(self) -> None:
        """SIGKILL the kernel process (no cleanup can run)."""
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)

    def close(self) -> None:
        """Stop whatever is still running."""
        if self.km.has_kernel:
            self.kill()


@pytest.fixture
def kernel_factory(tmp_path: pathlib.Path) -> Iterator[Any]:
    """Start real kernels (``kernel_factory(**env)``); all are stopped at the end of the test."""
    sessions: list[KernelSession] = []

    def start(cwd: pathlib.Path | None = None, **extra_env: str) -> KernelSession:
        session = KernelSession(kernel_env(tmp_path, **extra_env), cwd or tmp_path)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def run_notebook(path: pathlib.Path, env: dict[str, str], cwd: pathlib.Path, timeout: int = 300) -> Any:
    """Execute a notebook top to bottom with nbclient and a real kernel; any cell error raises."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env, cwd=str(cwd))
    return nb


# --------------------------------------------------------------------------- JupyterLab + Chromium


class JupyterLabServer:
    """JupyterLab on 127.0.0.1 with a token and a temporary root dir, in a subprocess."""

    def __init__(self, root: pathlib.Path, env: dict[str, str], log: pathlib.Path) -> None:
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = log
        self._log = open(log, "wb")
        settings = root.parent / "lab-settings"
        settings.mkdir(exist_ok=True)
        # no news or update checks (nothing outside loopback), no toast over the screenshot
        notification = settings / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        (notification / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--allow-root", "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
             "--ServerApp.open_browser=False", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             f"--LabApp.workspaces_dir={root.parent / 'workspaces'}",
             f"--LabApp.user_settings_dir={settings}",
             "--ServerApp.disable_check_xsrf=False"],
            env=env, cwd=str(root), stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not start: {self.log_path.read_text(errors='replace')[-3000:]}")

    def api(self, path: str) -> Any:
        """GET a server API path (JSON)."""
        with urllib.request.urlopen(f"{self.url}{path}?token={self.token}", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        """Stop the server (and with it its kernels)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def jupyterlab(root: pathlib.Path, env: dict[str, str], log: pathlib.Path) -> Iterator[JupyterLabServer]:
    """A running :class:`JupyterLabServer`, stopped at exit."""
    server = JupyterLabServer(root, env, log)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright; closed at exit."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make browser-deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def copy_notebook(name: str, dest: pathlib.Path) -> pathlib.Path:
    """Copy ``notebooks/<name>`` into ``dest`` (tests never write into the repo's notebooks)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    shutil.copy(NOTEBOOKS / name, target)
    return target


#: Files (screenshots) the tests saved for people to look at; printed at the end of the run.
SAVED_ARTIFACTS: list[pathlib.Path] = []


def save_artifact_path(path: pathlib.Path) -> None:
    """Remember an artifact so that the test run prints its path."""
    SAVED_ARTIFACTS.append(path)
    print(f"artifact: {path}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the paths of the artifacts the tests saved."""
    if SAVED_ARTIFACTS:
        terminalreporter.section("SkyTorch artifacts")
        for path in SAVED_ARTIFACTS:
            terminalreporter.write_line(str(path))
