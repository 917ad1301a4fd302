"""The tensor codec on its own: chunking, the hand-written protobuf encoding, validation."""

from __future__ import annotations

import pytest
import torch
from grpclib.const import Status

from skytorch.errors import UnsupportedTensorError
from skytorch.transport._proto.skytorch.v1 import TensorChunk, TensorHeader
from skytorch.transport._wire import decode_chunk, encode_chunk, encode_chunk_head, encode_header
from skytorch.transport.codec import (
    DTYPES,
    ChunkError,
    WireChunk,
    WireHeader,
    TensorAssembler,
    check_sendable,
    iter_chunks,
    parse_size,
)


def sample(dtype: torch.dtype, shape: tuple[int, ...] = (3, 5)) -> torch.Tensor:
    """A tensor of ``dtype`` with varied values (random bytes reinterpreted)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for dim in shape:
        numel *= dim
    raw = torch.randint(0, 256, (numel * itemsize,), dtype=torch.uint8)
    if dtype == torch.bool:
        return (raw % 2).to(torch.bool).reshape(shape)
    return raw.view(dtype).reshape(shape)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN patterns included), plus dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous(), b.contiguous()
    return bytes(a.reshape(-1).view(torch.uint8)) == bytes(b.reshape(-1).view(torch.uint8)) if a.numel() else True


def roundtrip(tensor: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Chunk, encode to protobuf bytes, decode, reassemble."""
    assembler = TensorAssembler()
    result = None
    for chunk in iter_chunks("t", tensor, chunk_size):
        done = assembler.feed(decode_chunk(encode_chunk(chunk)))
        if done is not None:
            result = done.tensor
    assembler.finish()
    assert result is not None
    return result


def test_every_plain_dtype_is_supported() -> None:
    expected = {"bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16",
                "bfloat16", "float32", "float64", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"}
    assert expected <= set(DTYPES)


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (4, 0, 3), (7,), (3, 5, 2), (1000,)], ids=str)
def test_roundtrip_every_dtype_and_shape(name: str, shape: tuple[int, ...]) -> None:
    tensor = sample(DTYPES[name], shape)
    assert same(roundtrip(tensor, chunk_size=1024), tensor)


def test_non_contiguous_views_arrive_contiguous_with_their_values() -> None:
    base = torch.randn(6, 8)
    for view in (base.t(), base[:, ::2], base[1:4, 2:7], base.expand(2, 6, 8), torch.randn(3, 4, dtype=torch.complex64).conj()):
        out = roundtrip(view)
        assert out.is_contiguous()
        assert torch.equal(out, view.resolve_conj())


def test_chunks_are_slices_of_the_tensor_memory() -> None:
    tensor = torch.randn(10_000)
    chunks = list(iter_chunks("t", tensor, 4096))
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].header is not None and all(c.header is None for c in chunks[1:])
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert sum(len(c.data) for c in chunks) == 40_000
    assert all(isinstance(c.data, memoryview) for c in chunks)
    # No copy: writing the tensor shows through the first chunk's data.
    tensor[0] = 123.0
    assert bytes(chunks[0].data[:4]) == bytes(torch.tensor([123.0]).view(torch.uint8))


def test_header_fields() -> None:
    chunk = next(iter_chunks("x", torch.zeros(2, 3, dtype=torch.bfloat16), metadata={"k": "v"}))
    assert chunk.header.dtype == "bfloat16"
    assert list(chunk.header.shape) == [2, 3]
    assert chunk.header.nbytes == 12
    assert dict(chunk.header.metadata) == {"k": "v"}


def test_hand_encoding_matches_betterproto() -> None:
    header = TensorHeader(dtype="float32", shape=[2, 2], nbytes=16, metadata={"a": "b"})
    chunk = TensorChunk(tensor_id="id-1", chunk_index=3, header=header, data=b"\x01" * 16, last=True)
    # Same message as betterproto's (fields may come in another order, which protobuf allows).
    assert TensorChunk().parse(encode_chunk(chunk)).to_dict() == chunk.to_dict()
    parsed = TensorChunk().parse(encode_chunk_head(chunk, 16) + b"\x01" * 16)
    assert parsed.to_dict() == chunk.to_dict()
    decoded = decode_chunk(bytes(chunk))
    assert (decoded.tensor_id, decoded.chunk_index, decoded.last, bytes(decoded.data)) == ("id-1", 3, True, b"\x01" * 16)
    assert (decoded.header.dtype, decoded.header.shape, decoded.header.nbytes, decoded.header.metadata) == (
        "float32", [2, 2], 16, {"a": "b"})
    assert decode_chunk(bytes(TensorChunk(tensor_id="y", chunk_index=1))).header is None
    # Negative dimensions survive (the server must see them to reject them), and a WireChunk encodes the same.
    odd = TensorHeader(dtype="int8", shape=[-1, 3], nbytes=0)
    assert encode_header(odd) == bytes(odd)
    assert decode_chunk(bytes(TensorChunk(tensor_id="n", header=odd, last=True))).header.shape == [-1, 3]
    wire = WireChunk(tensor_id="id-1", chunk_index=3, data=memoryview(b"\x01" * 16), last=True,
                     header=WireHeader(dtype="float32", shape=[2, 2], nbytes=16, metadata={"a": "b"}))
    assert encode_chunk(wire) == encode_chunk(chunk)


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (torch.randn(4, 4).to_sparse(), "sparse"),
        (torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.quint8), "quantized"),
        (torch.nested.nested_tensor([torch.randn(2), torch.randn(3)]), "nested"),
        (torch.empty(3, device="meta"), "meta"),
        ([1, 2, 3], "not a torch.Tensor"),
        (torch.empty(2, dtype=torch.bits8), "^tensor: dtype torch.bits8 cannot be sent"),
    ],
    ids=["sparse", "quantized", "nested", "meta", "list", "dtype"],
)
def test_unsupported_tensors_get_a_clear_type_error(tensor: object, match: str) -> None:
    with pytest.raises(TypeError, match=match) as info:
        check_sendable(tensor)
    assert isinstance(info.value, UnsupportedTensorError)


def _feed_all(chunks: list[TensorChunk], **kwargs: object) -> None:
    assembler = TensorAssembler(**kwargs)  # type: ignore[arg-type]
    for chunk in chunks:
        assembler.feed(chunk)
    assembler.finish()


def _header(**kw: object) -> TensorHeader:
    fields = {"dtype": "float32", "shape": [2], "nbytes": 8}
    fields.update(kw)
    return TensorHeader(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("chunks", "status", "match"),
    [
        ([TensorChunk(tensor_id="a", data=b"\0" * 8, last=True)], Status.INVALID_ARGUMENT, "no header"),
        ([TensorChunk(tensor_id="a", header=_header(dtype="float33"), data=b"\0" * 8, last=True)],
         Status.INVALID_ARGUMENT, "unknown dtype 'float33'"),
        ([TensorChunk(tensor_id="a", header=_header(shape=[-2], nbytes=8), last=True)],
         Status.INVALID_ARGUMENT, "negative dimension"),
        ([TensorChunk(tensor_id="a", header=_header(nbytes=9), last=True)], Status.INVALID_ARGUMENT, "nbytes 9"),
        ([TensorChunk(tensor_id="a", header=_header(), data=b"\0" * 4),
          TensorChunk(tensor_id="a", chunk_index=2, data=b"\0" * 4, last=True)], Status.INVALID_ARGUMENT, "out of order"),
        ([TensorChunk(tensor_id="a", header=_header(), data=b"\0" * 4),
          TensorChunk(tensor_id="a", chunk_index=0, data=b"\0" * 4, last=True)], Status.INVALID_ARGUMENT, "duplicated"),
        ([TensorChunk(tensor_id="a", header=_header(), data=b"\0" * 12, last=True)],
         Status.INVALID_ARGUMENT, "more data than its nbytes"),
        ([TensorChunk(tensor_id="a", header=_header(), data=b"\0" * 4, last=True)],
         Status.INVALID_ARGUMENT, "data missing"),
        ([TensorChunk(tensor_id="a", header=_header(), data=b"\0" * 4)], Status.INVALID_ARGUMENT, "ended mid-tensor"),
        ([TensorChunk(tensor_id="a", header=_header(shape=[1 << 40], nbytes=4 << 40), last=True)],
         Status.RESOURCE_EXHAUSTED, "over this server's limit"),
    ],
    ids=["no-header", "dtype", "negative", "nbytes", "order", "duplicate", "overflow", "short", "truncated", "too-big"],
)
def test_assembler_rejects_bad_streams_naming_the_tensor(chunks: list[TensorChunk], status: Status, match: str) -> None:
    with pytest.raises(ChunkError, match=match) as info:
        _feed_all(chunks, max_tensor_bytes=1 << 30)
    assert info.value.status == status
    assert "'a'" in info.value.message


def test_parse_size() -> None:
    assert parse_size("1048576") == 1 << 20
    assert parse_size("4MiB") == 4 << 20
    assert parse_size("2G") == 2_000_000_000
    with pytest.raises(ValueError, match="byte size"):
        parse_size("lots")
