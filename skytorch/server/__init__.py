"""The SkyTorch tensor server: ``python -m skytorch.server``.

Programmatic use (tests, the local backend)::

    settings = Settings(host="127.0.0.1", port=0)
    async with TensorServer(settings) as server:   # listening, health SERVING
        client = TensorClient("127.0.0.1", server.port)
        ...
    # or: await serve(settings)  # runs until SIGTERM/SIGINT (or stop_event), drains, returns

Every flag also comes from a ``SKYTORCH_<NAME>`` environment variable
(``SKYTORCH_PORT``, ``SKYTORCH_MAX_STORE_BYTES``, ...); the seed's ``LOG_LEVEL``
and ``CHUNK_SIZE`` work too. Explicit flags win over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import TracebackType

import torch
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health

from skytorch.transport._wire import TunedServer
from skytorch.transport.codec import DEFAULT_CHUNK_SIZE, parse_size, validate_chunk_size
from skytorch.transport.service import TensorHandler, TensorService, load_handler

logger = logging.getLogger(__name__)

GiB = 1 << 30


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Settings:
    """Server settings; see ``python -m skytorch.server --help`` for each.

    ``host`` None or ``""`` listens on all interfaces; ``port`` 0 binds a free
    port; ``max_*_bytes`` None means unbounded.
    """

    host: str | None = None
    port: int = 50051
    chunk_size: int = DEFAULT_CHUNK_SIZE
    log_level: str = "INFO"
    device: str | None = None
    handler: str | None = None
    max_tensor_bytes: int | None = 16 * GiB
    max_store_bytes: int | None = 32 * GiB
    grace_period: float = 10.0
    ready_file: str | None = None

    def resolved_device(self) -> str:
        """The device to use: the setting, or the default device."""
        return self.device or default_device()


_HELP = {
    "host": "interface to listen on (default: all interfaces)",
    "port": "port to listen on; 0 binds a free port (default: 50051)",
    "chunk_size": "bytes per outgoing tensor chunk, e.g. 1048576 or 4MiB (default: 2MiB; env CHUNK_SIZE too)",
    "log_level": "DEBUG, INFO, WARNING or ERROR (default: INFO; env LOG_LEVEL too)",
    "device": "device tensors are stored and handled on (default: cuda if available, else cpu)",
    "handler": "StreamTensors handler as module:function, called fn(tensor, metadata) -> tensor (default: identity)",
    "max_tensor_bytes": "largest tensor accepted, e.g. 2GiB; 0 = unbounded (default: 16GiB)",
    "max_store_bytes": "most bytes stored by SendTensors, e.g. 8GiB; 0 = unbounded (default: 32GiB)",
    "grace_period": "seconds SIGTERM/SIGINT wait for in-flight calls before exiting (default: 10)",
    "ready_file": "once listening and SERVING, atomically write host:port into this file",
}
_SEED_ENV = {"log_level": "LOG_LEVEL", "chunk_size": "CHUNK_SIZE"}


def _convert(name: str, value: str) -> object:
    if name == "port":
        return int(value)
    if name == "chunk_size":
        return validate_chunk_size(parse_size(value, what="chunk size"))
    if name in ("max_tensor_bytes", "max_store_bytes"):
        size = parse_size(value, what=name.replace("_", "-"))
        return size or None
    if name == "grace_period":
        return float(value)
    if name == "log_level":
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log level {value!r}: use DEBUG, INFO, WARNING or ERROR")
        return level
    return value or None


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from command-line flags, then ``SKYTORCH_*`` (and seed) environment variables, then defaults.

    Raises ``SystemExit`` (argparse's usage error) with a clear message on bad values.
    """
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m skytorch.server",
                                     description="SkyTorch tensor server (gRPC, skytorch.v1.TensorService)")
    for f in fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=_HELP[f.name])
    args = parser.parse_args(argv)
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name)
        source = "--" + f.name.replace("_", "-")
        if raw is None:
            for var in (f"SKYTORCH_{f.name.upper()}", _SEED_ENV.get(f.name)):
                if var and env.get(var):
                    raw, source = env[var], var
                    break
        if raw is None:
            continue
        try:
            values[f.name] = _convert(f.name, raw)
        except ValueError as exc:
            parser.error(f"{source}: {exc}")
    return Settings(**values)  # type: ignore[arg-type]


class TensorServer:
    """A running tensor server: grpclib server + TensorService + grpc.health.v1, owned and closed together."""

    def __init__(self, settings: Settings | None = None, *, handler: TensorHandler | None = None) -> None:
        self.settings = settings or Settings()
        s = self.settings
        if handler is None and s.handler:
            handler = load_handler(s.handler)
        self.service = TensorService(
            device=s.resolved_device(),
            handler=handler,
            chunk_size=s.chunk_size,
            max_tensor_bytes=s.max_tensor_bytes,
            max_store_bytes=s.max_store_bytes,
        )
        self._status = ServiceStatus()
        self._health = Health({self.service: [self._status]})
        self._server: TunedServer | None = None
        self.port: int = s.port
        self.host: str = s.host or "0.0.0.0"

    @property
    def address(self) -> str:
        """``host:port`` clients on this machine can dial (all-interfaces binds report 127.0.0.1)."""
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Listen, mark health SERVING, and write the ready file if one is set."""
        self._server = TunedServer([self.service, self._health])
        await self._server.start(self.settings.host or None, self.settings.port)
        sockets = self._server._server.sockets if self._server._server else []  # type: ignore[union-attr]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._status.set(True)
        logger.info("tensor server listening on %s:%d (device %s, chunk %d bytes)",
                    self.host, self.port, self.service.device, self.settings.chunk_size)
        if self.settings.ready_file:
            _write_atomic(self.settings.ready_file, self.address)

    async def stop(self, grace_period: float | None = None) -> bool:
        """Health NOT_SERVING, refuse new calls, drain in-flight ones (up to the grace period), close.

        Returns True when every in-flight call finished within the grace period.
        """
        if self._server is None:
            return True
        grace = self.settings.grace_period if grace_period is None else grace_period
        self._status.set(False)
        in_flight = self.service.in_flight
        if in_flight:
            logger.info("draining %d in-flight call(s) for up to %.1fs", in_flight, grace)
        drained = await self.service.drain(grace)
        if not drained:
            logger.warning("grace period over with %d call(s) still running; cancelling them", self.service.in_flight)
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()
        logger.info("tensor server stopped")
        return drained

    async def __aenter__(self) -> TensorServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ready-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


async def serve(settings: Settings | None = None, *, stop_event: asyncio.Event | None = None,
                handler: TensorHandler | None = None) -> bool:
    """Run a server until SIGTERM/SIGINT (or ``stop_event``), then drain and stop.

    Returns True when all in-flight calls finished within the grace period.
    """
    server = TensorServer(settings, handler=handler)
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, _on_signal, sig, stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / not Unix
            pass
    try:
        await server.start()
        await stop.wait()
        return await server.stop()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if server._server is not None:
            await server.stop(0)


def _on_signal(sig: int, stop: asyncio.Event) -> None:
    logger.info("received %s: shutting down", signal.Signals(sig).name)
    stop.set()


__all__ = ["Settings", "TensorServer", "default_device", "parse_settings", "serve"]
