#!/usr/bin/env python3
"""Tensor transport benchmark: ours against raw TCP and the upstream design, in one run.

Each server runs in its own process on loopback:
  (a) raw socket: bytes only, into a preallocated buffer (the physical reference)
  (b) upstream design: grpcio, torch.save into a buffer, 1 MiB protobuf chunks,
      reassembled and torch.load(weights_only=True)
  (c) ours: send_tensors / receive_tensors of a 64 MiB float32 tensor, and the
      stream_tensors echo of the same
  (d) round-trip latency of a 4 KiB tensor through stream_tensors (p50, p99)
  (e) peak RSS of client and server while sending a 1 GiB tensor

Usage: python benchmarks/bench_transport.py [--size-mib 64] [--repeat 5] [--rss-mib 1024] [--skip-rss]
Prints a table: each throughput in GB/s and as a ratio to (a) and to (b).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import pathlib
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import _bench_servers as servers  # noqa: E402

MiB = 1 << 20


@contextlib.contextmanager
def spawn(args: list[str], what: str):
    """Start a server process with a port file as its last argument; yield (port, Popen) once it is written."""
    with tempfile.TemporaryDirectory() as tmp:
        portfile = os.path.join(tmp, "port")
        proc = subprocess.Popen([sys.executable, *args, portfile], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(portfile):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} server did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.02)
            text = open(portfile).read().strip()
            yield int(text.rsplit(":", 1)[-1]), proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class CpuMeter:
    """CPU seconds (user + system) used by this process and a server process since start()."""

    def __init__(self, server_pid: int) -> None:
        import psutil

        self.server = psutil.Process(server_pid)
        self.start()

    def _now(self) -> float:
        server = self.server.cpu_times()
        return time.process_time() + server.user + server.system

    def start(self) -> None:
        self.t0 = self._now()

    def per_gb(self, nbytes: int) -> float:
        """CPU seconds (client + server) per GB moved since start()."""
        return (self._now() - self.t0) / (nbytes / 1e9)


def best(times: list[float], nbytes: int) -> float:
    """GB/s of the median run (robust to the noisy shared machine)."""
    return nbytes / statistics.median(times) / 1e9


# ------------------------------------------------------------------ (a) raw socket

def bench_raw(nbytes: int, repeat: int) -> dict[str, float]:
    with spawn([str(ROOT / "benchmarks" / "_bench_servers.py"), "raw"], "raw") as (port, proc):
        cpu = CpuMeter(proc.pid)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = memoryview(bytearray(os.urandom(1024)) * (nbytes // 1024))
        into = memoryview(bytearray(nbytes))
        send, recv = [], []
        for i in range(repeat + 1):
            if i == 1:
                cpu.start()
            t0 = time.perf_counter()
            sock.sendall(b"S" + struct.pack("<Q", nbytes))
            sock.sendall(payload)
            servers.recv_exact_into(sock, memoryview(bytearray(1)))
            t1 = time.perf_counter()
            sock.sendall(b"R" + struct.pack("<Q", nbytes))
            servers.recv_exact_into(sock, into)
            t2 = time.perf_counter()
            send.append(t1 - t0)
            recv.append(t2 - t1)
        cpu_per_gb = cpu.per_gb(repeat * 2 * nbytes)
        sock.close()
    return {"send": best(send[1:], nbytes), "receive": best(recv[1:], nbytes),
            "stream": nbytes * 2 / statistics.median([a + b for a, b in zip(send[1:], recv[1:])]) / 1e9,
            "cpu": cpu_per_gb}


# ------------------------------------------------------------------ (b) upstream design

def bench_upstream(tensor: torch.Tensor, repeat: int) -> dict[str, float]:
    import grpc

    tmp = tempfile.mkdtemp()
    pb2, pb2_grpc = servers.grpcio_stubs(tmp)
    nbytes = tensor.numel() * tensor.element_size()

    def chunks(tensor_id: str):
        buf = io.BytesIO()
        torch.save(tensor, buf)
        data = buf.getvalue()
        step = servers.UPSTREAM_CHUNK
        for i in range(0, len(data), step):
            yield pb2.TensorChunk(tensor_id=tensor_id, chunk_index=i // step, data=data[i:i + step],
                                  last=i + step >= len(data))

    def load(stream):
        parts = []
        out = []
        for chunk in stream:
            parts.append(chunk.data)
            if chunk.last:
                out.append(torch.load(io.BytesIO(b"".join(parts)), weights_only=True))
                parts = []
        return out

    with spawn([str(ROOT / "benchmarks" / "_bench_servers.py"), "upstream"], "upstream") as (port, proc):
        cpu = CpuMeter(proc.pid)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)])
        stub = pb2_grpc.TensorServiceStub(channel)
        send, recv, stream = [], [], []
        for i in range(repeat + 1):
            if i == 1:
                cpu.start()
            t0 = time.perf_counter()
            stub.SendTensors(chunks("t"))
            t1 = time.perf_counter()
            got = load(stub.ReceiveTensors(pb2.ReceiveTensorsRequest(count=1, parameters={"ids": "t"})))
            t2 = time.perf_counter()
            echo = load(stub.StreamTensors(chunks("e")))
            t3 = time.perf_counter()
            assert got[0].shape == tensor.shape and echo[0].shape == tensor.shape
            send.append(t1 - t0)
            recv.append(t2 - t1)
            stream.append(t3 - t2)
        cpu_per_gb = cpu.per_gb(repeat * 4 * nbytes)
        channel.close()
    return {"send": best(send[1:], nbytes), "receive": best(recv[1:], nbytes),
            "stream": best(stream[1:], 2 * nbytes), "cpu": cpu_per_gb}


# ------------------------------------------------------------------ (c, d) ours

def ours_server(extra: list[str] | None = None):
    return spawn(["-m", "skytorch.server", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
                  "--log-level", "WARNING", *(extra or []), "--ready-file"], "skytorch")


def bench_ours(tensor: torch.Tensor, repeat: int, latency_calls: int) -> tuple[dict[str, float], dict[str, float]]:
    from skytorch.transport import TensorClient

    nbytes = tensor.numel() * tensor.element_size()

    async def run(port: int, cpu: CpuMeter):
        async with TensorClient("127.0.0.1", port) as client:
            send, recv, stream = [], [], []
            for i in range(repeat + 1):
                if i == 1:
                    cpu.start()
                t0 = time.perf_counter()
                await client.send_tensors(tensor, ids=["t"])
                t1 = time.perf_counter()
                got = await client.receive_tensors(parameters={"ids": "t"})
                t2 = time.perf_counter()
                echo = await client.stream_tensors(tensor)
                t3 = time.perf_counter()
                assert torch.equal(got[0], tensor) and torch.equal(echo[0], tensor)
                send.append(t1 - t0)
                recv.append(t2 - t1)
                stream.append(t3 - t2)
            cpu_per_gb = cpu.per_gb(repeat * 4 * nbytes)
            small = torch.randn(1024)  # 4 KiB
            lat = []
            for _ in range(50):
                await client.stream_tensors(small)
            for _ in range(latency_calls):
                t0 = time.perf_counter()
                await client.stream_tensors(small)
                lat.append(time.perf_counter() - t0)
            lat.sort()
        return ({"send": best(send[1:], nbytes), "receive": best(recv[1:], nbytes),
                 "stream": best(stream[1:], 2 * nbytes), "cpu": cpu_per_gb},
                {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3})

    with ours_server() as (port, proc):
        return asyncio.run(run(port, CpuMeter(proc.pid)))


# ------------------------------------------------------------------ (e) peak RSS

_RSS_CLIENT = r"""
import asyncio, resource, sys, torch
sys.path.insert(0, sys.argv[3])
from skytorch.transport import TensorClient
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = torch.ones(int(sys.argv[2]) // 4, dtype=torch.float32)
async def main():
    async with TensorClient("127.0.0.1", int(sys.argv[1])) as c:
        r = await c.send_tensors(t, ids=["big"])
        assert r.success
asyncio.run(main())
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def bench_rss(nbytes: int) -> dict[str, float]:
    import psutil

    with ours_server() as (port, proc):
        server = psutil.Process(proc.pid)
        time.sleep(0.5)
        server_base = server.memory_info().rss
        peak = [server_base]
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], server.memory_info().rss)
                time.sleep(0.005)

        watcher = threading.Thread(target=poll)
        watcher.start()
        out = subprocess.run([sys.executable, "-c", _RSS_CLIENT, str(port), str(nbytes), str(ROOT)],
                             check=True, capture_output=True, text=True)
        time.sleep(0.2)
        stop.set()
        watcher.join()
    client_base, client_peak = (int(v) for v in out.stdout.split())
    return {"client_base": client_base, "client_peak": client_peak, "server_base": server_base,
            "server_peak": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--rss-mib", type=int, default=1024)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    nbytes = args.size_mib * MiB
    tensor = torch.randn(nbytes // 4)
    print(f"tensor: {args.size_mib} MiB float32, {args.repeat} timed runs each (median), loopback, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    raw = bench_raw(nbytes, args.repeat)
    print("raw socket done", flush=True)
    upstream = bench_upstream(tensor, args.repeat)
    print("upstream design done", flush=True)
    ours, latency = bench_ours(tensor, args.repeat, args.latency_calls)
    print("ours done\n", flush=True)
    rows = [("(a) raw socket", raw), ("(b) upstream: grpcio + torch.save", upstream), ("(c) skytorch", ours)]
    print(f"{'':36} {'direction':10} {'GB/s':>7} {'x raw':>7} {'x upstream':>11}")
    for name, figures in rows:
        for direction in ("send", "receive", "stream"):
            value = figures[direction]
            print(f"{name:36} {direction:10} {value:7.2f} {value / raw[direction]:7.2f} "
                  f"{value / upstream[direction]:11.2f}")
    print("(stream = echo: bytes both ways / round-trip time; raw 'stream' = send then receive)")
    print("\nCPU seconds (client + server) per GB moved, all three calls together (less sensitive")
    print("than GB/s to other load on the machine):")
    for name, figures in rows:
        print(f"    {name:36} {figures['cpu']:6.2f} s/GB")
    print(f"\n(d) 4 KiB stream_tensors round trip over {args.latency_calls} calls: "
          f"p50 {latency['p50_ms']:.3f} ms, p99 {latency['p99_ms']:.3f} ms")
    if not args.skip_rss:
        rss = bench_rss(args.rss_mib * MiB)
        limit = args.rss_mib * MiB + 256 * MiB
        print(f"\n(e) sending a {args.rss_mib} MiB tensor (limit: tensor + 256 MiB = {limit / MiB:.0f} MiB)")
        for side in ("client", "server"):
            peak, base = rss[f"{side}_peak"], rss[f"{side}_base"]
            print(f"    {side}: peak RSS {peak / MiB:7.0f} MiB (before the tensor: {base / MiB:.0f} MiB; "
                  f"peak - tensor = {(peak - args.rss_mib * MiB) / MiB:.0f} MiB) -> "
                  f"{'within' if peak <= limit else 'OVER'} the limit")


if __name__ == "__main__":
    main()
