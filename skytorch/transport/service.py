"""The server side of ``skytorch.v1.TensorService``: a bounded tensor store and a handler.

:class:`TensorService` is a grpclib servable (it has ``__mapping__``), used by
``skytorch.server`` and directly by tests. Every RPC validates its input with
:class:`~skytorch.transport.codec.TensorAssembler` and answers protocol
violations with a clear gRPC status naming the tensor and the problem; the
server keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import torch
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from skytorch.errors import UnsupportedTensorError
from skytorch.transport._proto.skytorch.v1 import (
    ReceiveTensorsRequest,
    SendTensorsResponse,
    TensorChunk,
)
from skytorch.transport._wire import send_chunk
from skytorch.transport.codec import (
    DEFAULT_CHUNK_SIZE,
    DTYPES,
    Assembled,
    ChunkError,
    TensorAssembler,
    check_sendable,
    iter_chunks,
    tensor_nbytes,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = "skytorch.v1.TensorService"
#: A StreamTensors handler: ``fn(tensor, metadata) -> tensor``.
TensorHandler = Callable[[torch.Tensor, Mapping[str, str]], torch.Tensor]

RECEIVE_PARAMETERS = ("ids", "pop", "shape", "dtype", "fill")
FILLS = ("randn", "zeros", "ones", "arange")
MAX_GENERATED_COUNT = 10_000


def identity_handler(tensor: torch.Tensor, metadata: Mapping[str, str]) -> torch.Tensor:
    """The default StreamTensors handler: returns its input unchanged."""
    return tensor


def load_handler(spec: str) -> TensorHandler:
    """Import a handler from ``"module:function"``; raise ``ValueError`` saying what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler {spec!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"handler {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"handler {spec!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"handler {spec!r}: {attr!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _invalid(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)


class TensorStore:
    """Tensors by id, bounded by ``max_bytes`` (reservations count before data arrives)."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self._tensors: dict[str, torch.Tensor] = {}
        self._used = 0
        self._reserved = 0

    @property
    def used_bytes(self) -> int:
        """Bytes held by stored tensors."""
        return self._used

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, tensor_id: object) -> bool:
        return tensor_id in self._tensors

    def reserve(self, tensor_id: str, nbytes: int) -> None:
        """Reserve room for an incoming tensor or raise ChunkError(RESOURCE_EXHAUSTED)."""
        if self.max_bytes is not None and self._used + self._reserved + nbytes > self.max_bytes:
            raise ChunkError(
                Status.RESOURCE_EXHAUSTED,
                f"tensor {tensor_id!r}: storing {nbytes} bytes would exceed the store limit of {self.max_bytes} "
                f"bytes ({self._used} used, {self._reserved} reserved; --max-store-bytes); nothing was stored",
            )
        self._reserved += nbytes

    def release(self, nbytes: int) -> None:
        """Give back a reservation."""
        self._reserved -= nbytes

    def commit(self, items: list[tuple[str, torch.Tensor]]) -> None:
        """Store reserved tensors (replacing ones with the same id) and turn their reservations into use."""
        for tensor_id, tensor in items:
            nbytes = tensor_nbytes(tensor)
            self._reserved -= nbytes
            replaced = self._tensors.get(tensor_id)
            if replaced is not None:
                self._used -= tensor_nbytes(replaced)
            self._tensors[tensor_id] = tensor
            self._used += nbytes

    def get(self, tensor_id: str) -> torch.Tensor:
        """The stored tensor (KeyError when absent)."""
        return self._tensors[tensor_id]

    def pop(self, tensor_id: str) -> torch.Tensor | None:
        """Remove and return a tensor (None when absent)."""
        tensor = self._tensors.pop(tensor_id, None)
        if tensor is not None:
            self._used -= tensor_nbytes(tensor)
        return tensor

    def ids(self) -> list[str]:
        """Ids of the stored tensors, oldest first."""
        return list(self._tensors)


class TensorService:
    """grpclib servable implementing ``skytorch.v1.TensorService``.

    ``device``: where received tensors are stored and handled; ``handler``:
    StreamTensors function; ``chunk_size``: bytes per outgoing chunk;
    ``max_tensor_bytes`` / ``max_store_bytes``: limits (None = unbounded).
    """

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        handler: TensorHandler | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_tensor_bytes: int | None = None,
        max_store_bytes: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.handler: TensorHandler = handler or identity_handler
        self.chunk_size = chunk_size
        self.max_tensor_bytes = max_tensor_bytes
        self.store = TensorStore(max_store_bytes)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    # ------------------------------------------------------------------ drain

    @contextlib.asynccontextmanager
    async def _call(self, name: str) -> AsyncIterator[None]:
        if self.draining:
            raise GRPCError(Status.UNAVAILABLE, "tensor server is shutting down; retry on a new server")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        except ChunkError as exc:
            logger.info("%s rejected: %s", name, exc.message)
            raise GRPCError(exc.status, exc.message) from None
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        """Number of RPCs being served now."""
        return self._in_flight

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls, wait up to ``timeout`` s for in-flight ones; True if all finished."""
        self.draining = True
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ helpers

    async def _recv(self, stream: Stream) -> TensorChunk | None:
        try:
            return await stream.recv_message()
        except ValueError as exc:  # raised by the codec on a malformed message
            raise _invalid(f"malformed TensorChunk message: {exc}") from None

    def _place(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.device.type == "cpu" else tensor.to(self.device)

    async def _send_tensor(self, stream: Stream, tensor_id: str, tensor: torch.Tensor,
                           metadata: Mapping[str, str] | None = None) -> None:
        for chunk in iter_chunks(tensor_id, tensor, self.chunk_size, metadata):
            await send_chunk(stream, chunk)

    # ------------------------------------------------------------------ RPCs

    async def send_tensors(self, stream: Stream) -> None:
        """SendTensors: store every received tensor under its id; all of the call or nothing."""
        async with self._call("SendTensors"):
            reserved: list[tuple[str, torch.Tensor]] = []
            held = 0

            def reserve(tensor_id: str, nbytes: int) -> None:
                """Reserve store room for one incoming tensor of this call."""
                nonlocal held
                if not tensor_id:
                    raise ChunkError(Status.INVALID_ARGUMENT, "a tensor has an empty tensor_id; SendTensors stores by id")
                self.store.reserve(tensor_id, nbytes)
                held += nbytes

            assembler = TensorAssembler(max_tensor_bytes=self.max_tensor_bytes, reserve=reserve)
            try:
                while (chunk := await self._recv(stream)) is not None:
                    done = assembler.feed(chunk)
                    if done is not None:
                        reserved.append((done.tensor_id, self._place(done.tensor)))
                assembler.finish()
            except BaseException:
                self.store.release(held)
                raise
            self.store.commit(reserved)
            ids = [tensor_id for tensor_id, _ in reserved]
            logger.debug("stored %d tensor(s): %s", len(ids), ids)
            await stream.send_message(SendTensorsResponse(
                success=True, message=f"Received {len(ids)} tensor(s)", tensor_ids=ids,
            ))

    async def receive_tensors(self, stream: Stream) -> None:
        """ReceiveTensors: stored tensors by ``ids`` (``pop`` removes them) or ``count`` generated ones."""
        async with self._call("ReceiveTensors"):
            request: ReceiveTensorsRequest | None = await stream.recv_message()
            assert request is not None
            params = dict(request.parameters)
            unknown = sorted(set(params) - set(RECEIVE_PARAMETERS))
            if unknown:
                raise _invalid(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(RECEIVE_PARAMETERS)}")
            if "ids" in params:
                await self._send_stored(stream, params)
            else:
                await self._send_generated(stream, request.count, params)

    async def _send_stored(self, stream: Stream, params: dict[str, str]) -> None:
        extra = sorted(set(params) - {"ids", "pop"})
        if extra:
            raise _invalid(f"parameter(s) {', '.join(extra)} do not apply with 'ids' (only 'pop' does)")
        ids = [part.strip() for part in params["ids"].split(",") if part.strip()]
        pop = _parse_bool(params.get("pop", "false"), "pop")
        missing = [tensor_id for tensor_id in ids if tensor_id not in self.store]
        if missing:
            held = self.store.ids()
            raise GRPCError(
                Status.NOT_FOUND,
                f"tensor id(s) not in the store: {', '.join(missing)}; stored: {', '.join(held[:20]) or 'none'}"
                + (" ..." if len(held) > 20 else ""),
            )
        for tensor_id in ids:
            await self._send_tensor(stream, tensor_id, self.store.get(tensor_id))
        if pop:
            for tensor_id in ids:
                self.store.pop(tensor_id)

    async def _send_generated(self, stream: Stream, count: int, params: dict[str, str]) -> None:
        if "pop" in params:
            raise _invalid("parameter 'pop' applies only with 'ids'")
        if count > MAX_GENERATED_COUNT:
            raise _invalid(f"count {count} is over the limit of {MAX_GENERATED_COUNT} generated tensors")
        try:
            shape = [int(part) for part in params.get("shape", "10,10").split(",") if part.strip()]
        except ValueError:
            raise _invalid(f"shape {params['shape']!r} is not a comma-separated list of integers") from None
        if any(dim < 0 for dim in shape):
            raise _invalid(f"shape {shape} has a negative dimension")
        dtype_name = params.get("dtype", "float32")
        dtype = DTYPES.get(dtype_name)
        if dtype is None:
            raise _invalid(f"unknown dtype {dtype_name!r}; accepted: {', '.join(DTYPES)}")
        fill = params.get("fill", "randn")
        if fill not in FILLS:
            raise _invalid(f"unknown fill {fill!r}; accepted: {', '.join(FILLS)}")
        nbytes = math.prod(shape) * dtype.itemsize
        if self.max_tensor_bytes is not None and nbytes > self.max_tensor_bytes:
            raise GRPCError(Status.RESOURCE_EXHAUSTED,
                            f"a generated tensor of shape {shape} ({nbytes} bytes) is over --max-tensor-bytes "
                            f"{self.max_tensor_bytes}")
        for index in range(count):
            try:
                tensor = _generate(shape, dtype, fill)
            except (RuntimeError, TypeError) as exc:
                raise _invalid(f"cannot generate {fill} of dtype {dtype_name}: {exc}") from None
            await self._send_tensor(stream, f"generated-{index}", tensor)

    async def stream_tensors(self, stream: Stream) -> None:
        """StreamTensors: each complete input tensor goes through the handler; results stream back in order."""
        async with self._call("StreamTensors"):
            assembler = TensorAssembler(max_tensor_bytes=self.max_tensor_bytes)
            handler = self.handler
            while (chunk := await self._recv(stream)) is not None:
                done: Assembled | None = assembler.feed(chunk)
                if done is None:
                    continue
                tensor = self._place(done.tensor)
                try:
                    if handler is identity_handler:
                        result = tensor
                    else:
                        result = await asyncio.to_thread(handler, tensor, done.metadata)
                except Exception as exc:
                    logger.warning("handler failed on tensor %r: %s: %s", done.tensor_id, type(exc).__name__, exc)
                    raise GRPCError(
                        Status.INTERNAL,
                        f"handler failed on tensor {done.tensor_id!r}: {type(exc).__name__}: {exc}",
                    ) from None
                try:
                    check_sendable(result, f"handler result for tensor {done.tensor_id!r}")
                except UnsupportedTensorError as exc:
                    raise GRPCError(Status.INTERNAL, str(exc)) from None
                await self._send_tensor(stream, done.tensor_id, result, done.metadata)
            assembler.finish()

    def __mapping__(self) -> dict[str, Handler]:
        """grpclib routing table."""
        prefix = f"/{SERVICE_NAME}/"
        return {
            prefix + "SendTensors": Handler(
                self.send_tensors, Cardinality.STREAM_UNARY, TensorChunk, SendTensorsResponse),
            prefix + "ReceiveTensors": Handler(
                self.receive_tensors, Cardinality.UNARY_STREAM, ReceiveTensorsRequest, TensorChunk),
            prefix + "StreamTensors": Handler(
                self.stream_tensors, Cardinality.STREAM_STREAM, TensorChunk, TensorChunk),
        }


def _parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise _invalid(f"parameter {name!r}: {value!r} is not true/false")


def _generate(shape: list[int], dtype: torch.dtype, fill: str) -> torch.Tensor:
    if fill == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if fill == "ones":
        return torch.ones(shape, dtype=dtype)
    if fill == "arange":
        return torch.arange(math.prod(shape)).to(dtype).reshape(shape)
    if dtype.is_floating_point or dtype.is_complex:
        try:
            return torch.randn(shape, dtype=dtype)
        except (RuntimeError, NotImplementedError):
            return torch.randn(shape).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape).to(torch.bool)
    return torch.randint(0, 100, shape).to(dtype)
