"""``python -m skytorch.demo`` (``make demo``): the README's walkthrough on the embedded local backend.

Two Computes come up in parallel as a :class:`~skytorch.client.Cluster`; tensors are
sent, received and streamed to both at once; the figures (time to ready, MB/s) are
printed; everything is deleted at the end, also on Ctrl+C or an error.

Runs on the local backend unless ``SKYTORCH_BACKEND`` says otherwise. ``--mib`` sets
the size of the tensor sent to each Compute.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import warnings
from typing import Any, Sequence


def _print_event(prefix: str):
    def _on_event(event: Any) -> None:
        print(f"  [{prefix}] {event.type:<7} {event.reason:<9} {event.message}")

    return _on_event


async def run(mib: int = 32) -> None:
    """The demo itself: a Cluster of two Computes, parallel tensor traffic, figures, cleanup."""
    import torch

    from skytorch.client import Cluster, Compute

    numel = mib * 1024 * 1024 // 4
    print(f"Starting 2 Computes ({os.environ.get('SKYTORCH_BACKEND', 'auto')} backend) ...")
    started = time.perf_counter()
    async with Cluster(
        Compute("demo-a", image="localhost:5001/skytorch.torch-server:latest", on_events=_print_event("demo-a")),
        Compute("demo-b", image="localhost:5001/skytorch.torch-server:latest", on_events=_print_event("demo-b")),
    ) as (a, b):
        ready_s = time.perf_counter() - started
        print(f"Both ready in {ready_s:.2f}s: demo-a at {a.endpoint[0]}:{a.endpoint[1]}, "
              f"demo-b at {b.endpoint[0]}:{b.endpoint[1]}")

        tensor = torch.randn(numel)
        t0 = time.perf_counter()
        ra, rb = await asyncio.gather(a.send_tensors(tensor), b.send_tensors(tensor))
        dt = time.perf_counter() - t0
        print(f"send_tensors    {mib} MiB to each: {ra.message!r} / {rb.message!r}; "
              f"{2 * tensor.nbytes / dt / 1e6:,.0f} MB/s in total")

        t0 = time.perf_counter()
        got_a, got_b = await asyncio.gather(  # the tensor each one stored, streamed back and removed there
            a.receive_tensors(parameters={"ids": ra.tensor_ids[0], "pop": "true"}),
            b.receive_tensors(parameters={"ids": rb.tensor_ids[0], "pop": "true"}),
        )
        dt = time.perf_counter() - t0
        same = all(torch.equal(t, tensor) for t in got_a + got_b)
        print(f"receive_tensors the stored tensor back from each: {'identical' if same else 'DIFFERENT'}; "
              f"{2 * tensor.nbytes / dt / 1e6:,.0f} MB/s in total")
        generated = await a.receive_tensors(count=2, parameters={"shape": "20,20"})
        print(f"receive_tensors count=2, shape 20,20 (generated there): {[tuple(t.shape) for t in generated]}")

        inputs = [torch.randn(256, 256), torch.randn(numel // 2)]
        t0 = time.perf_counter()
        out_a, out_b = await asyncio.gather(a.stream_tensors(*inputs), b.stream_tensors(*inputs))
        dt = time.perf_counter() - t0
        same = all(torch.equal(x, y) for x, y in zip(inputs + inputs, out_a + out_b))
        nbytes = 2 * 2 * sum(t.nbytes for t in inputs)  # both ways, both Computes
        print(f"stream_tensors  2 through each: round trip {'identical' if same else 'DIFFERENT'}; "
              f"{nbytes / dt / 1e6:,.0f} MB/s in total (both directions)")
        print("Deleting both Computes ...")
    print(f"Done: demo-a {a.state}, demo-b {b.state}; total {time.perf_counter() - started:.2f}s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m skytorch.demo``."""
    parser = argparse.ArgumentParser(prog="python -m skytorch.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="MiB sent to each Compute (default: 32)")
    options = parser.parse_args(argv)
    os.environ.setdefault("SKYTORCH_BACKEND", "local")
    # torch's CPU wheels warn at import when numpy is absent; the demo does not use numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(options.mib))
    except KeyboardInterrupt:
        print("Interrupted: the Computes were deleted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
