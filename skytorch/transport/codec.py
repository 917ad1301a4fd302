"""Tensor <-> TensorChunk codec: raw little-endian bytes plus a header, never pickle.

Sending: :func:`iter_chunks` yields :class:`TensorChunk` messages whose ``data``
is a ``memoryview`` slice of the tensor's own memory (a contiguous CPU tensor
is not copied; a non-contiguous view or an accelerator tensor is made
contiguous on the CPU once).

Receiving: :class:`TensorAssembler` validates every chunk, allocates the tensor
once from the header (``torch.empty``) and writes each chunk's bytes straight
into it, so peak extra memory stays near one chunk.

Protocol violations raise :class:`ChunkError` carrying the gRPC status the
server answers with; the message names the tensor id and the problem.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from grpclib.const import Status

from skytorch.errors import UnsupportedTensorError
from skytorch.transport._proto.skytorch.v1 import TensorChunk, TensorHeader

logger = logging.getLogger(__name__)

MiB = 1 << 20
#: Default chunk size (bytes of tensor data per TensorChunk message).
DEFAULT_CHUNK_SIZE = 2 * MiB
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 64 * MiB
#: Most dimensions a tensor may declare (torch itself allows 64 at most... and so do we).
MAX_DIMS = 64

_DTYPE_NAMES = [
    "bool",
    "uint8", "uint16", "uint32", "uint64",
    "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "float64",
    "complex64", "complex128",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
]

#: Every plain-memory dtype this torch build has, by wire name (``float32``, ...).
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in _DTYPE_NAMES if isinstance(getattr(torch, name, None), torch.dtype)
}
_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - no big-endian host runs torch today
    raise ImportError("skytorch.transport needs a little-endian host (the wire format is little-endian)")


@dataclass(slots=True)
class WireHeader:
    """A TensorHeader as a plain object (the hot path avoids betterproto's per-attribute cost).

    Same field names as the generated ``TensorHeader``; the codec accepts either.
    """

    dtype: str = ""
    shape: list[int] = field(default_factory=list)
    nbytes: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class WireChunk:
    """A TensorChunk as a plain object; ``data`` may be a memoryview. Same fields as ``TensorChunk``."""

    tensor_id: str = ""
    chunk_index: int = 0
    header: WireHeader | None = None
    data: Any = b""
    last: bool = False


def has_header(chunk: Any) -> bool:
    """Whether a chunk carries a header (betterproto gives unset message fields a default instance)."""
    h = chunk.header
    return h is not None and bool(h.dtype or h.shape or h.nbytes or h.metadata)


class ChunkError(Exception):
    """A chunk stream broke the wire contract; ``status`` is the gRPC status to answer with."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def chunk_size_from_env(default: int = DEFAULT_CHUNK_SIZE) -> int:
    """The chunk size from ``SKYTORCH_CHUNK_SIZE`` or the seed's ``CHUNK_SIZE``, else ``default``."""
    for var in ("SKYTORCH_CHUNK_SIZE", "CHUNK_SIZE"):
        value = os.environ.get(var)
        if value:
            return validate_chunk_size(parse_size(value, what=var))
    return default


def validate_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if it is within [1 KiB, 64 MiB], else raise ``ValueError``."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} is out of range: use {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    return chunk_size


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
          "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Parse a byte size such as ``1048576``, ``4MiB``, ``1.5G`` or ``512kb`` into bytes."""
    if isinstance(text, int):
        return text
    raw = text.strip().lower().replace("_", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = raw[len(number):].strip()
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{what}: cannot read {text!r} as a byte size (examples: 1048576, 4MiB, 2G)") from None
    if value < 0:
        raise ValueError(f"{what}: {text!r} is negative")
    return int(value)


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype (``torch.float32`` -> ``"float32"``)."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise UnsupportedTensorError(f"dtype {dtype} cannot be sent: supported dtypes are {', '.join(DTYPES)}") from None


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor occupies on the wire."""
    return tensor.numel() * tensor.element_size()


def check_sendable(tensor: object, name: str = "tensor") -> torch.Tensor:
    """Raise :class:`~skytorch.errors.UnsupportedTensorError` (a ``TypeError``) unless ``tensor`` is plain memory."""
    if not isinstance(tensor, torch.Tensor):
        raise UnsupportedTensorError(f"{name} is a {type(tensor).__name__}, not a torch.Tensor")
    if tensor.is_nested:
        raise UnsupportedTensorError(f"{name} is a nested tensor: send its components as separate tensors")
    if tensor.layout != torch.strided:
        raise UnsupportedTensorError(f"{name} has layout {tensor.layout} (sparse): call .to_dense() before sending")
    if tensor.is_quantized:
        raise UnsupportedTensorError(f"{name} is quantized: call .dequantize() or send .int_repr() before sending")
    if tensor.is_meta or tensor.device.type == "meta":
        raise UnsupportedTensorError(f"{name} is a meta tensor: it has no data to send")
    try:
        dtype_name(tensor.dtype)
    except UnsupportedTensorError as exc:
        raise UnsupportedTensorError(f"{name}: {exc}") from None
    return tensor


def byte_view(tensor: torch.Tensor) -> memoryview:
    """A writable byte ``memoryview`` over a contiguous CPU tensor's memory (no copy).

    The view keeps the tensor alive (a transport may buffer it after a send
    returns).
    """
    nbytes = tensor_nbytes(tensor)
    if nbytes == 0:
        return memoryview(b"")
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("byte_view needs a contiguous CPU tensor")
    array = (ctypes.c_char * nbytes).from_address(tensor.data_ptr())
    array._keep_alive = tensor  # type: ignore[attr-defined]  # the view keeps the tensor's memory alive
    return memoryview(array).cast("B")


_MADV_HUGEPAGE = 14
_HUGEPAGE_MIN = 4 * MiB
_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):  # pragma: no cover - a libc without madvise
        _libc = None


def advise_hugepages(tensor: torch.Tensor) -> None:
    """Ask Linux to back a large, fresh CPU tensor with transparent huge pages.

    Writing a received tensor into freshly allocated memory costs one page
    fault per 4 KiB; with huge pages it is one per 2 MiB, which makes filling it
    several times faster. A hint only: silently does nothing where unsupported.
    """
    nbytes = tensor_nbytes(tensor)
    if _libc is None or nbytes < _HUGEPAGE_MIN or tensor.device.type != "cpu":
        return
    address = tensor.data_ptr()
    start = (address + 4095) & ~4095
    end = (address + nbytes) & ~4095
    if end > start:
        _libc.madvise(start, end - start, _MADV_HUGEPAGE)


def to_wire_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as contiguous CPU memory: itself when it already is, else one copy."""
    if tensor.device.type != "cpu":
        tensor = tensor.detach().to("cpu")
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor.detach().contiguous()


def make_header(tensor: torch.Tensor, metadata: Mapping[str, str] | None = None) -> WireHeader:
    """The header describing ``tensor`` (dtype name, shape, nbytes, metadata)."""
    return WireHeader(
        dtype=dtype_name(tensor.dtype),
        shape=list(tensor.shape),
        nbytes=tensor_nbytes(tensor),
        metadata=dict(metadata or {}),
    )


def iter_chunks(
    tensor_id: str,
    tensor: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metadata: Mapping[str, str] | None = None,
) -> Iterator[WireChunk]:
    """Yield the TensorChunk messages (as :class:`WireChunk`) of one tensor, ``data`` as slices of its memory.

    The tensor must have passed :func:`check_sendable`. At least one chunk is
    always produced (a zero-element tensor is one chunk with empty data).
    """
    wire = to_wire_tensor(tensor)
    header = make_header(wire, metadata)
    view = byte_view(wire)
    total = len(view)
    index = 0
    offset = 0
    while True:
        end = min(offset + chunk_size, total)
        last = end >= total
        yield WireChunk(
            tensor_id=tensor_id,
            chunk_index=index,
            header=header if index == 0 else None,
            data=view[offset:end],
            last=last,
        )
        if last:
            break
        offset = end
        index += 1
    # `wire` stays referenced until here, so every yielded view was valid while used.
    del view, wire


@dataclass
class _Pending:
    """A tensor being assembled from its chunks."""

    tensor_id: str
    tensor: torch.Tensor
    view: memoryview
    nbytes: int
    metadata: dict[str, str]
    received: int = 0
    next_index: int = 1


@dataclass
class Assembled:
    """A complete tensor decoded from its chunks."""

    tensor_id: str
    tensor: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)


def parse_header(tensor_id: str, header: WireHeader | TensorHeader, max_tensor_bytes: int | None) -> tuple[torch.dtype, list[int]]:
    """Validate a header; return ``(dtype, shape)`` or raise :class:`ChunkError`."""
    dtype = DTYPES.get(header.dtype)
    if dtype is None:
        raise ChunkError(
            Status.INVALID_ARGUMENT,
            f"tensor {tensor_id!r}: unknown dtype {header.dtype!r} (accepted: {', '.join(DTYPES)})",
        )
    shape = list(header.shape)
    if len(shape) > MAX_DIMS:
        raise ChunkError(Status.INVALID_ARGUMENT, f"tensor {tensor_id!r}: {len(shape)} dimensions, at most {MAX_DIMS}")
    if any(dim < 0 for dim in shape):
        raise ChunkError(Status.INVALID_ARGUMENT, f"tensor {tensor_id!r}: negative dimension in shape {shape}")
    itemsize = dtype.itemsize
    expected = math.prod(shape) * itemsize
    if header.nbytes != expected:
        raise ChunkError(
            Status.INVALID_ARGUMENT,
            f"tensor {tensor_id!r}: nbytes {header.nbytes} does not match shape {shape} x {itemsize} "
            f"byte(s) per {header.dtype} element = {expected}",
        )
    if max_tensor_bytes is not None and expected > max_tensor_bytes:
        raise ChunkError(
            Status.RESOURCE_EXHAUSTED,
            f"tensor {tensor_id!r}: {expected} bytes is over this server's limit of {max_tensor_bytes} bytes "
            "(--max-tensor-bytes)",
        )
    return dtype, shape


class TensorAssembler:
    """Turn a stream of TensorChunk messages back into tensors, validating the wire contract.

    Feed chunks in arrival order with :meth:`feed`; it returns an
    :class:`Assembled` when a tensor's ``last`` chunk arrives. Call
    :meth:`finish` when the stream ends: it raises if a tensor is incomplete.
    ``reserve(tensor_id, nbytes)`` is called before each allocation (the
    server uses it to enforce its store bound); it may raise ChunkError.
    """

    def __init__(
        self,
        *,
        max_tensor_bytes: int | None = None,
        reserve: Callable[[str, int], None] | None = None,
    ) -> None:
        self._max = max_tensor_bytes
        self._reserve = reserve
        self._pending: _Pending | None = None

    @property
    def in_progress(self) -> str | None:
        """The id of the tensor being assembled, if any."""
        return self._pending.tensor_id if self._pending else None

    def feed(self, chunk: WireChunk | TensorChunk) -> Assembled | None:
        """Consume one chunk; return the finished tensor when this was its last chunk."""
        pending = self._pending
        tensor_id = chunk.tensor_id
        if pending is None:
            if chunk.chunk_index != 0:
                raise ChunkError(
                    Status.INVALID_ARGUMENT,
                    f"tensor {tensor_id!r}: chunk {chunk.chunk_index} arrived first; a tensor starts with chunk 0",
                )
            header = chunk.header
            if not has_header(chunk):
                raise ChunkError(
                    Status.INVALID_ARGUMENT,
                    f"tensor {tensor_id!r}: first chunk has no header (dtype, shape, nbytes)",
                )
            dtype, shape = parse_header(tensor_id, header, self._max)
            if self._reserve is not None:
                self._reserve(tensor_id, header.nbytes)
            tensor = torch.empty(shape, dtype=dtype)
            advise_hugepages(tensor)
            pending = _Pending(
                tensor_id=tensor_id,
                tensor=tensor,
                view=byte_view(tensor),
                nbytes=header.nbytes,
                metadata=dict(header.metadata),
                next_index=0,
            )
            self._pending = pending
        else:
            if tensor_id != pending.tensor_id:
                raise ChunkError(
                    Status.INVALID_ARGUMENT,
                    f"tensor {pending.tensor_id!r}: chunk of tensor {tensor_id!r} arrived before its last chunk "
                    f"({pending.received} of {pending.nbytes} bytes received)",
                )
            if has_header(chunk):
                raise ChunkError(
                    Status.INVALID_ARGUMENT,
                    f"tensor {tensor_id!r}: chunk {chunk.chunk_index} carries a header; only chunk 0 may",
                )
        if chunk.chunk_index != pending.next_index:
            problem = "duplicated" if chunk.chunk_index < pending.next_index else "out of order (a chunk is missing)"
            raise ChunkError(
                Status.INVALID_ARGUMENT,
                f"tensor {tensor_id!r}: chunk {chunk.chunk_index} is {problem}; expected chunk {pending.next_index}",
            )
        data = chunk.data
        size = len(data)
        end = pending.received + size
        if end > pending.nbytes:
            raise ChunkError(
                Status.INVALID_ARGUMENT,
                f"tensor {tensor_id!r}: more data than its nbytes {pending.nbytes} (chunk {chunk.chunk_index} "
                f"brings it to {end})",
            )
        if size:
            pending.view[pending.received:end] = data
        pending.received = end
        pending.next_index += 1
        if not chunk.last:
            return None
        if end != pending.nbytes:
            raise ChunkError(
                Status.INVALID_ARGUMENT,
                f"tensor {tensor_id!r}: last chunk arrived after {end} of {pending.nbytes} bytes (data missing)",
            )
        self._pending = None
        return Assembled(tensor_id=pending.tensor_id, tensor=pending.tensor, metadata=pending.metadata)

    def finish(self) -> None:
        """Raise :class:`ChunkError` if the stream ended in the middle of a tensor."""
        if self._pending is not None:
            pending = self._pending
            self._pending = None
            raise ChunkError(
                Status.INVALID_ARGUMENT,
                f"tensor {pending.tensor_id!r}: stream ended mid-tensor after chunk {pending.next_index - 1} "
                f"({pending.received} of {pending.nbytes} bytes)",
            )

    def abandon(self) -> tuple[str, int] | None:
        """Drop a half-assembled tensor; return its ``(id, nbytes)`` so a reservation can be released."""
        pending, self._pending = self._pending, None
        return (pending.tensor_id, pending.nbytes) if pending else None
