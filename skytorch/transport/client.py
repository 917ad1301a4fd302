"""TensorClient: the async client of a SkyTorch tensor server (``skytorch.v1.TensorService``).

One HTTP/2 connection (a grpclib Channel) is opened lazily and reused by every
call. A grpclib Channel belongs to the event loop it was created on: when the
client is used from another running loop (a notebook's sync wrapper, a new
``asyncio.run``), it drops the old connection and reconnects transparently.

Errors: an unreachable server raises :class:`~skytorch.errors.ServerUnavailableError`
naming ``host:port``; a gRPC error status raises a
:class:`~skytorch.errors.TransportError` subclass carrying ``.status`` and
``.target``; an unsupported tensor raises
:class:`~skytorch.errors.UnsupportedTensorError` (a ``TypeError``) before
anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import torch
from grpclib.client import Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from skytorch.errors import (
    RemoteHandlerError,
    ServerUnavailableError,
    TensorRejectedError,
    TransportError,
    TransportTimeoutError,
)
from skytorch.transport._proto.skytorch.v1 import ReceiveTensorsRequest, SendTensorsResponse, TensorChunk
from skytorch.transport._wire import FAST_SEND_MIN, TunedChannel, send_chunk
from skytorch.transport.codec import (
    ChunkError,
    TensorAssembler,
    check_sendable,
    chunk_size_from_env,
    has_header,
    iter_chunks,
    tensor_nbytes,
    validate_chunk_size,
)
from skytorch.transport.service import SERVICE_NAME

logger = logging.getLogger(__name__)

#: ``progress(bytes_done, bytes_total)``: called after each chunk. For sends of a
#: known list the total is known upfront; for receives and iterators it is the
#: total of the tensors whose headers have been seen so far.
Progress = Callable[[int, int], None]

_PATH = f"/{SERVICE_NAME}/"
_REJECTED = {Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.RESOURCE_EXHAUSTED,
             Status.OUT_OF_RANGE, Status.FAILED_PRECONDITION, Status.ALREADY_EXISTS}
T = TypeVar("T")


class _Progress:
    def __init__(self, callback: Progress | None, total: int = 0) -> None:
        self.callback = callback
        self.done = 0
        self.total = total

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` more done and report."""
        self.done += nbytes
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class TensorClient:
    """Async client of a SkyTorch tensor server at ``host:port``.

    ``chunk_size``: bytes per outgoing chunk (default ``SKYTORCH_CHUNK_SIZE`` /
    ``CHUNK_SIZE`` or 2 MiB); ``timeout``: per-call deadline in seconds (None:
    none). Use as ``async with TensorClient(host, port) as client: ...`` or call
    :meth:`close`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        chunk_size: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.chunk_size = validate_chunk_size(chunk_size) if chunk_size else chunk_size_from_env()
        self.timeout = timeout
        self._channel: TunedChannel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def target(self) -> str:
        """``host:port`` of the server."""
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"TensorClient({self.target!r})"

    # ------------------------------------------------------------------ connection

    def _get_channel(self) -> TunedChannel:
        if self._closed:
            raise TransportError(f"TensorClient for {self.target} is closed", target=self.target)
        loop = asyncio.get_running_loop()
        if self._channel is not None and self._loop is not loop:
            logger.debug("TensorClient %s used from a new event loop: reconnecting", self.target)
            self._drop_channel()
        if self._channel is None:
            self._channel = TunedChannel(self.host, self.port)
            self._loop = loop
        return self._channel

    def _drop_channel(self) -> None:
        channel, loop = self._channel, self._loop
        self._channel, self._loop = None, None
        if channel is None:
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is not None and loop is not current and loop.is_running() and not loop.is_closed():
            loop.call_soon_threadsafe(channel.close)  # its loop runs in another thread: close it there
            return
        try:
            channel.close()
        except RuntimeError:  # its loop is closed: the transport goes with it
            pass

    async def close(self) -> None:
        """Close the connection; further calls raise TransportError."""
        self._closed = True
        self._drop_channel()

    async def __aenter__(self) -> TensorClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def _open(self, method: str, cardinality: Cardinality, request_type: Any,
                    reply_type: Any) -> AsyncIterator[Stream]:
        channel = self._get_channel()
        try:
            async with channel.request(_PATH + method if "/" not in method else method, cardinality,
                                       request_type, reply_type, timeout=self.timeout) as stream:
                yield stream
        except GRPCError as exc:
            raise self._error(exc, method) from None
        except StreamTerminatedError as exc:
            raise ServerUnavailableError(
                f"connection to tensor server {self.target} was lost during {method}: {exc}",
                status=Status.UNAVAILABLE, target=self.target) from None
        except (ConnectionError, OSError) as exc:
            self._drop_channel()
            raise ServerUnavailableError(
                f"cannot reach tensor server at {self.target}: {exc.strerror or exc}",
                status=Status.UNAVAILABLE, target=self.target) from None
        except asyncio.TimeoutError:
            raise TransportTimeoutError(f"{method} on {self.target} did not finish within {self.timeout}s",
                                        status=Status.DEADLINE_EXCEEDED, target=self.target) from None

    def _error(self, exc: GRPCError, method: str) -> TransportError:
        status = exc.status
        text = f"{method} on {self.target} failed with {status.name}: {exc.message or 'no message'}"
        if status is Status.UNAVAILABLE:
            return ServerUnavailableError(text, status=status, target=self.target)
        if status is Status.DEADLINE_EXCEEDED:
            return TransportTimeoutError(text, status=status, target=self.target)
        if status in _REJECTED:
            return TensorRejectedError(text, status=status, target=self.target)
        if status is Status.INTERNAL and (exc.message or "").startswith("handler "):
            return RemoteHandlerError(text, status=status, target=self.target)
        return TransportError(text, status=status, target=self.target)

    async def _send_all(self, stream: Stream, tensors: Iterable[torch.Tensor] | AsyncIterable[torch.Tensor],
                        ids: Sequence[str] | None, progress: _Progress, *, known_total: bool) -> list[str]:
        sent: list[str] = []
        # With a list we know which chunk is the very last one: a small one carries
        # END_STREAM itself (one write less per call, which is what latency is made of).
        final = len(tensors) - 1 if isinstance(tensors, (list, tuple)) else -1
        index = 0
        async for tensor in _aiter(tensors):
            check_sendable(tensor, f"tensor {index}")
            tensor_id = ids[index] if ids is not None else uuid.uuid4().hex
            if not known_total:
                progress.total += tensor_nbytes(tensor)
            for chunk in iter_chunks(tensor_id, tensor, self.chunk_size):
                if index == final and chunk.last and len(chunk.data) < FAST_SEND_MIN:
                    await stream.send_message(chunk, end=True)
                    progress.add(len(chunk.data))
                    return [*sent, tensor_id]
                await send_chunk(stream, chunk)
                progress.add(len(chunk.data))
            sent.append(tensor_id)
            index += 1
        await stream.end()
        return sent

    @contextlib.asynccontextmanager
    async def _sender(self, stream: Stream, tensors: Any, ids: Sequence[str] | None, progress: _Progress,
                      known_total: bool) -> AsyncIterator[asyncio.Task[list[str]]]:
        # Send in a task while the caller reads replies: the server may answer (or
        # fail) before it has read everything, and flow control must not deadlock.
        await stream.send_request()
        task = asyncio.ensure_future(self._send_all(stream, tensors, ids, progress, known_total=known_total))
        try:
            yield task
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            elif not task.cancelled():
                task.exception()  # retrieved: the caller's own error (if any) is the one that matters

    # ------------------------------------------------------------------ RPCs

    async def send_tensors(self, *tensors: torch.Tensor, progress: Progress | None = None,
                           ids: Sequence[str] | None = None) -> SendTensorsResponse:
        """Store tensors on the server; returns ``SendTensorsResponse`` (``.success``, ``.message``, ``.tensor_ids``).

        ``ids`` names the tensors (default: fresh unique ids). Every tensor is
        checked before anything is sent.
        """
        for index, tensor in enumerate(tensors):
            check_sendable(tensor, f"tensor {index}")
        if ids is not None and len(ids) != len(tensors):
            raise ValueError(f"send_tensors got {len(tensors)} tensor(s) but {len(ids)} id(s)")
        total = sum(tensor_nbytes(t) for t in tensors)
        return await self._send(tensors, ids, _Progress(progress, total), known_total=True)

    async def send_tensor_stream(self, tensors: Iterable[torch.Tensor] | AsyncIterable[torch.Tensor], *,
                                 progress: Progress | None = None) -> SendTensorsResponse:
        """Store a (possibly long, lazily produced) sequence of tensors, holding one at a time."""
        return await self._send(tensors, None, _Progress(progress), known_total=False)

    async def _send(self, tensors: Any, ids: Sequence[str] | None, progress: _Progress,
                    known_total: bool) -> SendTensorsResponse:
        async with self._open("SendTensors", Cardinality.STREAM_UNARY, TensorChunk, SendTensorsResponse) as stream:
            async with self._sender(stream, tensors, ids, progress, known_total):
                reply = await stream.recv_message()
        assert reply is not None
        return reply

    async def iter_receive_tensors(self, count: int = 1, parameters: Mapping[str, str] | None = None, *,
                                   progress: Progress | None = None) -> AsyncIterator[torch.Tensor]:
        """Yield tensors from the server one by one as each completes (see :meth:`receive_tensors`)."""
        request = ReceiveTensorsRequest(count=count, parameters={str(k): str(v) for k, v in (parameters or {}).items()})
        tracker = _Progress(progress)
        async with self._open("ReceiveTensors", Cardinality.UNARY_STREAM, ReceiveTensorsRequest,
                              TensorChunk) as stream:
            await stream.send_message(request, end=True)
            async for tensor in self._receive_stream(stream, tracker):
                yield tensor

    async def _receive_stream(self, stream: Stream, tracker: _Progress) -> AsyncIterator[torch.Tensor]:
        assembler = TensorAssembler()
        try:
            while (chunk := await stream.recv_message()) is not None:
                if has_header(chunk):
                    tracker.total += chunk.header.nbytes
                done = assembler.feed(chunk)
                tracker.add(len(chunk.data))
                if done is not None:
                    yield done.tensor
            assembler.finish()
        except ChunkError as exc:
            raise TransportError(f"tensor server {self.target} sent a malformed stream: {exc.message}",
                                 status=exc.status, target=self.target) from None

    async def receive_tensors(self, count: int = 1, parameters: Mapping[str, str] | None = None, *,
                              progress: Progress | None = None) -> list[torch.Tensor]:
        """Receive tensors: ``count`` generated ones (``parameters``: ``shape`` e.g. ``"20,20"``,
        ``dtype``, ``fill`` in randn/zeros/ones/arange), or stored ones with
        ``parameters={"ids": "a,b"}`` (add ``"pop": "true"`` to remove them)."""
        return [tensor async for tensor in self.iter_receive_tensors(count, parameters, progress=progress)]

    async def iter_stream_tensors(self, tensors: Iterable[torch.Tensor] | AsyncIterable[torch.Tensor], *,
                                  progress: Progress | None = None) -> AsyncIterator[torch.Tensor]:
        """Send tensors through the server's handler and yield each result as it arrives, in order.

        ``tensors`` may be a lazy (async) iterable: only a few are in flight at once.
        ``progress`` counts bytes sent and received together.
        """
        tracker = _Progress(progress)
        async with self._open("StreamTensors", Cardinality.STREAM_STREAM, TensorChunk, TensorChunk) as stream:
            async with self._sender(stream, tensors, None, tracker, known_total=False):
                async for tensor in self._receive_stream(stream, tracker):
                    yield tensor

    async def stream_tensors(self, *tensors: torch.Tensor, progress: Progress | None = None) -> list[torch.Tensor]:
        """Send tensors through the server's handler (default: identity); return the results in order."""
        for index, tensor in enumerate(tensors):
            check_sendable(tensor, f"tensor {index}")
        return [t async for t in self.iter_stream_tensors(list(tensors), progress=progress)]

    async def health(self) -> bool:
        """True when the server's ``grpc.health.v1`` check says SERVING, False for NOT_SERVING.

        Raises ServerUnavailableError when the server cannot be reached.
        """
        async with self._open("/grpc.health.v1.Health/Check", Cardinality.UNARY_UNARY, HealthCheckRequest,
                              HealthCheckResponse) as stream:
            await stream.send_message(HealthCheckRequest(service=""), end=True)
            reply = await stream.recv_message()
        return bool(reply is not None and reply.status == HealthCheckResponse.SERVING)
