"""Fixtures of the SkyTorch operator: the real kopf operator running against the API emulator.

- ``operator_config``: the :class:`~skytorch.operator.OperatorConfig` used (namespace ``default``,
  kubeconfig of the emulator, a recognisable default server image).
- ``skytorch_operator``: a started :class:`OperatorThread` (stopped and joined after the test).
- ``wait_for``: poll a condition on the test's side until it holds (a hang guard, not a timing assertion).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import pytest

from skytorch.operator import OperatorConfig, kopf_settings, run

logger = logging.getLogger(__name__)
T = TypeVar("T")

TEST_SERVER_IMAGE = "registry.test/skytorch-server:operator-test"


class OperatorThread:
    """``skytorch.operator.run`` in a thread with its own event loop, stopped through kopf's stop flag."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="skytorch-operator", daemon=True)

    def _main(self) -> None:
        settings = kopf_settings(self.config)
        # Short server-side watch timeouts and quick reconnects: a test sees changes without waiting.
        settings.watching.server_timeout = 10
        settings.watching.client_timeout = 20
        settings.watching.reconnect_backoff = 0.1
        settings.posting.idle_timeout = 0.2
        settings.queueing.idle_timeout = 1.0
        settings.background.cancellation_polling = 0.1
        try:
            asyncio.run(run(self.config, stop_flag=self.stop_flag, ready_flag=self.ready_flag, settings=settings))
        except BaseException as exc:  # reported to the test through .error
            logger.exception("the operator thread failed")
            self.error = exc
        finally:
            self.ready_flag.set()

    def start(self, timeout: float = 60) -> "OperatorThread":
        """Start and wait until kopf has started (its ready flag)."""
        self._thread.start()
        if not self.ready_flag.wait(timeout) or self.error is not None:
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        return self

    @property
    def alive(self) -> bool:
        """Whether the operator's thread is still running."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 60) -> None:
        """Ask kopf to stop, and wait for the thread to end."""
        self.stop_flag.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop")


@pytest.fixture
def operator_config(kubeconfig: pathlib.Path) -> OperatorConfig:
    """Operator configuration for the emulator's ``default`` namespace."""
    return OperatorConfig(server_image=TEST_SERVER_IMAGE, namespaces=("default",), kubeconfig=str(kubeconfig))


@pytest.fixture
def skytorch_operator(kube_emulator: Any, operator_config: OperatorConfig) -> Iterator[OperatorThread]:
    """The real SkyTorch operator (kopf) serving the emulator's ``default`` namespace."""
    operator = OperatorThread(operator_config).start()
    try:
        yield operator
    finally:
        operator.stop()
    assert operator.error is None, f"the operator crashed: {operator.error!r}"


def poll(check: Callable[[], T | None], *, timeout: float = 30, interval: float = 0.05, what: str = "") -> T:
    """Call ``check`` until it returns something truthy; fail (naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(interval)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """:func:`poll`, as a fixture."""
    return poll
