"""Time to ready, and API requests per ``ready()``.

1. Local backend: wall time until ``Cluster.ready()`` returns for 1 Compute and
   for 8 Computes, measured in the same run (target: 8 in <= 1.5x the time of 1).
2. Kubernetes API emulator (tests/emulator): how many API requests one
   ``ready()`` makes while the (fake) operator takes 0.5 s vs 3 s to mark the
   Compute ready (target: a constant handful, independent of the wait).

Prints figures and ratios; asserts nothing. Run: ``python benchmarks/bench_ready.py``
(``--rounds N`` repeats the local measurement and reports the median).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


async def _time_cluster(n: int, tag: str) -> float:
    from skytorch.client import Cluster, Compute

    cluster = Cluster(*(Compute(f"bench-{tag}-{i}") for i in range(n)))
    started = time.perf_counter()
    try:
        await cluster.ready(timeout=300)
        return time.perf_counter() - started
    finally:
        await cluster.delete(grace_period_seconds=5)


def _fresh_local_backend() -> None:
    from skytorch.client import _config

    os.environ["SKYTORCH_BACKEND"] = "local"
    _config._reset_for_tests()  # stops the previous backend's servers and its fork server


async def _cold(n: int, tag: str) -> float:
    """Time to ready on a backend that has not started anything yet (its fork server starts too)."""
    _fresh_local_backend()
    return await _time_cluster(n, tag)


def _line(label: str, runs: list[float]) -> float:
    value = statistics.median(runs)
    print(f"  {label:<26}{value:7.3f} s  (runs: {', '.join(f'{x:.3f}' for x in runs)})")
    return value


async def bench_local(rounds: int) -> None:
    """Time to ready of 1 vs 8 local Computes: cold and warm backend, and without the fork server."""
    print(f"Local backend: time until Cluster.ready() returns (median of {rounds}; {os.cpu_count()} CPUs here)")
    cold1 = [await _cold(1, f"cold1-{r}") for r in range(rounds)]
    cold8 = [await _cold(8, f"cold8-{r}") for r in range(rounds)]
    _fresh_local_backend()
    await _time_cluster(1, "warmup")
    warm1, warm8 = [], []
    for r in range(rounds):
        warm1.append(await _time_cluster(1, f"warm1-{r}"))
        warm8.append(await _time_cluster(8, f"warm8-{r}"))
    c1, c8 = _line("1 Compute, cold backend", cold1), _line("8 Computes, cold backend", cold8)
    w1, w8 = _line("1 Compute, warm backend", warm1), _line("8 Computes, warm backend", warm8)
    print(f"  ratio 8/1 cold: {c8 / c1:5.2f}x   warm: {w8 / w1:5.2f}x   (target <= 1.5x)")

    os.environ["SKYTORCH_LOCAL_ZYGOTE"] = "0"  # the reference: every server a fresh python -m skytorch.server
    try:
        plain1 = [await _cold(1, f"plain1-{r}") for r in range(rounds)]
        plain8 = [await _cold(8, f"plain8-{r}") for r in range(rounds)]
    finally:
        del os.environ["SKYTORCH_LOCAL_ZYGOTE"]
    p1, p8 = _line("1 Compute, no fork server", plain1), _line("8 Computes, no fork server", plain8)
    print(f"  ratio 8/1 without the fork server: {p8 / p1:5.2f}x  "
          f"(8 Computes: {p8 / c8:4.1f}x slower than with it, cold)")
    from skytorch.client import _config

    _config._reset_for_tests()


async def _count_ready_requests(emulator, name: str) -> list[str]:
    """Requests made from constructing a Compute until its ready() returned."""
    from skytorch.client import Compute

    before = len(emulator.requests)
    compute = Compute(name, image="example/skytorch:latest", host="127.0.0.1", port=50051)
    await compute.ready(timeout=60)
    made = list(emulator.requests)[before:]
    await compute.delete(grace_period_seconds=0)
    return [f"{r.method} {r.path.rsplit('/', 1)[-1]}{' (watch)' if r.is_watch else ''}" for r in made]


async def bench_emulator() -> None:
    """API requests from constructing a Compute until ready() returns, for a short and a long wait."""
    try:
        from tests.emulator import FakeOperator, KubeEmulator
    except ImportError as exc:
        print(f"Emulator benchmark skipped: {exc}")
        return
    from skytorch.client import _config

    print("Kubernetes API emulator: API requests from constructing a Compute until ready() returns")
    emulator = KubeEmulator()
    with emulator.running(), tempfile.TemporaryDirectory() as tmp:
        os.environ["KUBECONFIG"] = str(emulator.write_kubeconfig(pathlib.Path(tmp) / "kubeconfig", "default"))
        os.environ["SKYTORCH_BACKEND"] = "kubernetes"
        counts = {}
        for delay in (0.5, 3.0):
            _config._reset_for_tests()
            operator = FakeOperator(emulator, ready_delay=delay).start()
            try:
                made = await _count_ready_requests(emulator, f"bench-{int(delay * 10)}")
            finally:
                operator.stop()
            counts[delay] = len(made)
            print(f"  operator marks Ready after {delay:3.1f}s: {len(made)} requests: {', '.join(made)}")
            backend = _config.resolved_backend()
            if backend is not None:
                await backend.close()
        _config._reset_for_tests()
        print(f"  same count for a 6x longer wait: {'yes' if counts[0.5] == counts[3.0] else 'NO'}")


def main() -> int:
    """Run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=["local", "emulator"])
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["HOME"] = home  # no kubeconfig in reach: the local part must not pick a cluster
        os.environ.pop("KUBECONFIG", None)
        if options.only in (None, "local"):
            asyncio.run(bench_local(options.rounds))
        if options.only in (None, "emulator"):
            asyncio.run(bench_emulator())
    return 0


if __name__ == "__main__":
    sys.exit(main())
