"""Servers the transport benchmark runs, each in its own process.

``python benchmarks/_bench_servers.py raw PORTFILE``      raw TCP reference
``python benchmarks/_bench_servers.py upstream PORTFILE`` grpcio + torch.save design

The upstream design lives here only, as the baseline a user would otherwise
pick: it pickles (torch.save/torch.load) and is never part of SkyTorch.
"""

from __future__ import annotations

import importlib
import io
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
from concurrent import futures

ROOT = pathlib.Path(__file__).resolve().parent.parent
MiB = 1 << 20
UPSTREAM_CHUNK = 1 * MiB


def grpcio_stubs(out_dir: str):
    """Generate grpcio stubs for proto/skytorch/v1/tensor.proto into out_dir; return (pb2, pb2_grpc).

    Generated as top-level modules (tensor_pb2, tensor_pb2_grpc) so they never
    shadow the skytorch package.
    """
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto' / 'skytorch' / 'v1'}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", "tensor.proto"],
        check=True,
    )
    sys.path.insert(0, out_dir)
    try:
        return importlib.import_module("tensor_pb2"), importlib.import_module("tensor_pb2_grpc")
    finally:
        sys.path.remove(out_dir)


def _write_port(portfile: str, port: int) -> None:
    tmp = portfile + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(port))
    os.replace(tmp, portfile)


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    """Fill view from sock."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], min(len(view) - got, 4 * MiB))
        if not n:
            raise ConnectionError("peer closed")
        got += n


def run_raw(portfile: str) -> None:
    """Raw TCP: 'S'+size: read size bytes into a preallocated buffer, ack; 'R'+size: send size bytes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    _write_port(portfile, srv.getsockname()[1])
    buf = bytearray(0)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                head = bytearray(9)
                try:
                    recv_exact_into(conn, memoryview(head))
                except ConnectionError:
                    break
                op, size = head[:1], struct.unpack("<Q", head[1:])[0]
                if len(buf) < size:
                    buf = bytearray(size)
                view = memoryview(buf)[:size]
                if op == b"S":
                    recv_exact_into(conn, view)
                    conn.sendall(b"k")
                else:
                    conn.sendall(view)


def run_upstream(portfile: str) -> None:
    """The upstream design on grpcio: torch.save into a buffer, 1 MiB protobuf chunks, torch.load."""
    import grpc
    import torch

    tmp = tempfile.mkdtemp()
    pb2, pb2_grpc = grpcio_stubs(tmp)
    store: dict[str, bytes] = {}

    def load(data: bytes):
        return torch.load(io.BytesIO(data), weights_only=True)

    def save_chunks(tensor_id: str, tensor):
        buf = io.BytesIO()
        torch.save(tensor, buf)
        data = buf.getvalue()
        for i in range(0, max(len(data), 1), UPSTREAM_CHUNK):
            yield pb2.TensorChunk(tensor_id=tensor_id, chunk_index=i // UPSTREAM_CHUNK,
                                  data=data[i:i + UPSTREAM_CHUNK], last=i + UPSTREAM_CHUNK >= len(data))

    def collect(chunks):
        parts: list[bytes] = []
        for chunk in chunks:
            parts.append(chunk.data)
            if chunk.last:
                yield chunk.tensor_id, load(b"".join(parts))
                parts = []

    class Service(pb2_grpc.TensorServiceServicer):
        def SendTensors(self, request_iterator, context):
            ids = []
            for tensor_id, tensor in collect(request_iterator):
                store[tensor_id] = tensor
                ids.append(tensor_id)
            return pb2.SendTensorsResponse(success=True, message=f"Received {len(ids)} tensor(s)", tensor_ids=ids)

        def ReceiveTensors(self, request, context):
            for tensor_id in request.parameters["ids"].split(","):
                yield from save_chunks(tensor_id, store[tensor_id])

        def StreamTensors(self, request_iterator, context):
            for tensor_id, tensor in collect(request_iterator):
                yield from save_chunks(tensor_id, tensor)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 64 * MiB),
                                  ("grpc.max_send_message_length", 64 * MiB)])
    pb2_grpc.add_TensorServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _write_port(portfile, port)
    server.wait_for_termination()


if __name__ == "__main__":
    {"raw": run_raw, "upstream": run_upstream}[sys.argv[1]](sys.argv[2])
