"""An independent client: grpcio stubs generated from proto/ at test time call our server.

Also proves that pickle payloads sent as tensor data are stored and returned as
plain bytes, never executed.
"""

from __future__ import annotations

import importlib
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys

import grpc
import pytest
import torch
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from tests.plugins.transport import ROOT


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory):
    """grpcio modules (tensor_pb2, tensor_pb2_grpc) generated from proto/skytorch/v1/tensor.proto."""
    out = tmp_path_factory.mktemp("grpcio_stubs")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto' / 'skytorch' / 'v1'}",
         f"--python_out={out}", f"--grpc_python_out={out}", "tensor.proto"],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("tensor_pb2")
        pb2_grpc = importlib.import_module("tensor_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    yield pb2, pb2_grpc
    for name in ("tensor_pb2", "tensor_pb2_grpc"):
        sys.modules.pop(name, None)


@pytest.fixture
def grpcio_channel(server_process):
    proc = server_process()
    channel = grpc.insecure_channel(f"127.0.0.1:{proc.port}")
    yield channel
    channel.close()


def float_chunks(pb2, tensor_id: str, values: list[float], shape: list[int], pieces: int = 2):
    data = struct.pack(f"<{len(values)}f", *values)
    step = -(-len(data) // pieces)
    parts = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    for index, part in enumerate(parts):
        yield pb2.TensorChunk(
            tensor_id=tensor_id, chunk_index=index, data=part, last=index == len(parts) - 1,
            header=pb2.TensorHeader(dtype="float32", shape=shape, nbytes=len(data)) if index == 0 else None,
        )


def collect(chunks) -> dict[str, tuple[object, bytes]]:
    out: dict[str, tuple[object, bytes]] = {}
    header = None
    data = b""
    for chunk in chunks:
        if chunk.chunk_index == 0:
            header, data = chunk.header, b""
        data += chunk.data
        if chunk.last:
            out[chunk.tensor_id] = (header, data)
    return out


def test_health_check_with_grpcio(grpcio_channel) -> None:
    check = grpcio_channel.unary_unary("/grpc.health.v1.Health/Check",
                                       request_serializer=HealthCheckRequest.SerializeToString,
                                       response_deserializer=HealthCheckResponse.FromString)
    assert check(HealthCheckRequest(service=""), timeout=30).status == HealthCheckResponse.SERVING
    named = check(HealthCheckRequest(service="skytorch.v1.TensorService"), timeout=30)
    assert named.status == HealthCheckResponse.SERVING


def test_all_three_rpcs_with_grpcio(stubs, grpcio_channel) -> None:
    pb2, pb2_grpc = stubs
    stub = pb2_grpc.TensorServiceStub(grpcio_channel)
    values = [float(i) for i in range(12)]
    reply = stub.SendTensors(iter([*float_chunks(pb2, "a", values, [3, 4]), *float_chunks(pb2, "b", [1.5], [])]),
                             timeout=30)
    assert reply.success and reply.message == "Received 2 tensor(s)" and list(reply.tensor_ids) == ["a", "b"]

    got = collect(stub.ReceiveTensors(pb2.ReceiveTensorsRequest(count=0, parameters={"ids": "a,b"}), timeout=30))
    header, data = got["a"]
    assert (header.dtype, list(header.shape), header.nbytes) == ("float32", [3, 4], 48)
    assert list(struct.unpack("<12f", data)) == values
    assert list(got["b"][0].shape) == [] and struct.unpack("<f", got["b"][1]) == (1.5,)

    generated = collect(stub.ReceiveTensors(pb2.ReceiveTensorsRequest(count=2, parameters={"shape": "20,20"}),
                                            timeout=30))
    assert len(generated) == 2
    assert all(list(h.shape) == [20, 20] and len(d) == 1600 for h, d in generated.values())

    echoed = collect(stub.StreamTensors(float_chunks(pb2, "e", values, [12], pieces=3), timeout=30))
    assert list(struct.unpack("<12f", echoed["e"][1])) == values

    with pytest.raises(grpc.RpcError) as info:
        stub.ReceiveTensors(pb2.ReceiveTensorsRequest(count=1, parameters={"ids": "nope"}), timeout=30).next()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in info.value.details()


class _Exploit:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payloads_are_plain_bytes_never_executed(stubs, grpcio_channel, tmp_path: pathlib.Path) -> None:
    pb2, pb2_grpc = stubs
    stub = pb2_grpc.TensorServiceStub(grpcio_channel)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker))
    buf = io.BytesIO()
    torch.save({"x": _Exploit(marker)}, buf)  # what a torch.load-based server would execute
    blobs = {"pickle": payload, "torch-save": buf.getvalue()}
    chunks = [pb2.TensorChunk(tensor_id=name, header=pb2.TensorHeader(dtype="uint8", shape=[len(blob)],
                                                                     nbytes=len(blob)), data=blob, last=True)
              for name, blob in blobs.items()]
    assert stub.SendTensors(iter(chunks), timeout=30).success
    back = collect(stub.ReceiveTensors(pb2.ReceiveTensorsRequest(parameters={"ids": "pickle,torch-save"}), timeout=30))
    echoed = collect(stub.StreamTensors(iter(chunks), timeout=30))
    for name, blob in blobs.items():
        assert back[name][1] == blob and echoed[name][1] == blob
    assert not marker.exists()


def test_malformed_messages_get_invalid_argument_and_the_server_serves_on(stubs, grpcio_channel) -> None:
    pb2, pb2_grpc = stubs
    raw_send = grpcio_channel.stream_unary("/skytorch.v1.TensorService/SendTensors",
                                           request_serializer=lambda raw: raw,
                                           response_deserializer=pb2.SendTensorsResponse.FromString)
    for garbage in (b"\x0a\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x07"):  # truncated, bad UTF-8 id, bad wire type
        with pytest.raises(grpc.RpcError) as info:
            raw_send(iter([garbage]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed TensorChunk" in info.value.details()
    stub = pb2_grpc.TensorServiceStub(grpcio_channel)
    assert stub.SendTensors(float_chunks(pb2, "ok", [1.0, 2.0], [2]), timeout=30).success
