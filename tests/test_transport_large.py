"""A 256 MiB tensor both ways between processes without memory blow-up.

Peak extra memory on each side must stay near one tensor plus buffers (one
chunk, flow-control windows), never a second copy of the tensor.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psutil
import pytest
import torch

from skytorch.transport import TensorClient

MiB = 1 << 20
SIZE = 256 * MiB
SLACK = 128 * MiB  # windows (32 MiB each way), socket buffers, chunk in flight, allocator noise


class PeakRss:
    """Poll a process's RSS in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        """Peak minus the RSS when measuring began."""
        return self.peak - self.base


@pytest.mark.slow
def test_256_mib_tensor_without_memory_blowup(server_process) -> None:
    proc = server_process("--max-tensor-bytes", "1GiB", "--chunk-size", "2MiB")
    tensor = torch.randn(SIZE // 4)
    tensor[::4096] = torch.arange(tensor[::4096].numel(), dtype=torch.float32)  # a pattern worth checking

    async def run() -> None:
        async with TensorClient("127.0.0.1", proc.port) as client:
            await client.health()
            with PeakRss(proc.proc.pid) as server, PeakRss(psutil.Process().pid) as me:
                reply = await client.send_tensors(tensor, ids=["big"])
            assert reply.success
            # Server: the stored tensor plus buffers; client: buffers only (chunks are views of the tensor).
            assert server.growth <= SIZE + SLACK, f"server grew {server.growth / MiB:.0f} MiB"
            assert me.growth <= SLACK, f"client grew {me.growth / MiB:.0f} MiB"

            with PeakRss(proc.proc.pid) as server, PeakRss(psutil.Process().pid) as me:
                back = await client.receive_tensors(parameters={"ids": "big", "pop": "true"})
            assert torch.equal(back[0], tensor)
            assert server.growth <= SLACK, f"server grew {server.growth / MiB:.0f} MiB sending"
            assert me.growth <= SIZE + SLACK, f"client grew {me.growth / MiB:.0f} MiB receiving"

    asyncio.run(run())
