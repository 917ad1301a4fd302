"""The seed's client API end to end on the embedded local backend (real server processes, real gRPC)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from skytorch.client import Cluster, Compute, ComputeError, ComputeTimeoutError, log_event
from skytorch.client import _config
from skytorch.client._sync import run_sync
from tests.plugins.client import python_command, server_children

pytestmark = pytest.mark.timeout(180)

NEVER_READY = "import time\nwhile True: time.sleep(1)"
CRASH = "import sys; sys.stderr.write('fatal: out of widgets\\n'); sys.exit(7)"


def run_on_a_new_loop(coro, loops: list | None = None):
    """Run ``coro`` on a brand-new event loop, then cancel what is left on it and close it.

    What ``asyncio.run`` does, but it stays so in this pytest process: once any test calls a
    sync entry point inside a running loop, ``nest_asyncio`` replaces ``asyncio.run`` for the
    whole process by a version that reuses the thread's one loop and never closes it. The
    tests below would then no longer use a second loop, and leave the Compute's watch and
    event-stream tasks pending on a loop that is later closed or collected ("Task was
    destroyed but it is pending", "Exception ignored in: <async_generator ... watch>").
    ``loops`` collects the loops used, so a test can check they really were new ones.
    """

    async def _record():
        if loops is not None:
            loops.append(asyncio.get_running_loop())
        return await coro

    with asyncio.Runner() as runner:
        return runner.run(_record())


def local_pid(name: str) -> int | None:
    backend = _config.resolved_backend()
    return backend.pids().get(name) if backend is not None else None


async def test_async_with_readies_streams_tensors_and_deletes(local_client):
    states = []
    async with Compute("my-compute", image="localhost:5001/skytorch.torch-server:latest",
                       env={"LOG_LEVEL": "DEBUG"}, labels={"team": "ml"}) as compute:
        compute.subscribe(lambda c, what: states.append(c.state) if what == "state" else None)
        assert compute.state == "Ready" and compute.backend_kind == "local"
        assert compute.namespace == "default"
        host, port = compute.endpoint
        assert host == "127.0.0.1" and port > 0
        assert compute.resource.metadata.labels == {"team": "ml"}
        assert compute.resource.spec.env == [{"name": "LOG_LEVEL", "value": "DEBUG"}]
        assert [c.type for c in compute.resource.status.conditions] == ["Ready"]
        assert compute.ready_since is not None and compute.created_at is not None

        tensor = torch.randn(100, 100)
        response = await compute.send_tensors(tensor, torch.arange(6))
        assert response.success and len(response.tensor_ids) == 2
        assert compute.transfer.direction == "send" and compute.transfer.done
        assert compute.transfer.bytes_done == compute.transfer.bytes_total >= tensor.numel() * 4

        received = await compute.receive_tensors(count=2, parameters={"shape": "20,20"})
        assert [t.shape for t in received] == [torch.Size([20, 20])] * 2
        progress = []
        stored = await compute.send_tensors(torch.arange(5.0), ids=["five"],
                                            progress=lambda done, total: progress.append((done, total)))
        assert stored.tensor_ids == ["five"] and progress[-1] == (20, 20)
        (back,) = await compute.receive_tensors(count=1, parameters={"ids": "five"})
        assert back.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]

        inputs = [torch.randn(10, 10), torch.randn(20, 20)]
        outputs = await compute.stream_tensors(*inputs)
        assert all(torch.equal(a, b) for a, b in zip(inputs, outputs))
        assert compute.transfer.direction == "stream"
        pid = local_pid("my-compute")
        assert pid is not None
    assert compute.state == "Deleted" and "Deleted" in states
    assert local_pid("my-compute") is None and server_children() == []
    assert compute.endpoint is None


async def test_constructing_inside_a_loop_does_not_block_and_later_calls_await_the_apply(local_client):
    compute = Compute("in-loop")
    assert compute.state == "Applying"  # the apply is a task; the constructor returned at once
    assert compute.resource is None
    try:
        await compute.ready(timeout=90)
        assert compute.state == "Ready" and compute.resource.is_ready
    finally:
        await compute.delete(grace_period_seconds=5)


def test_constructing_outside_a_loop_applies_before_returning(local_client):
    compute = Compute("outside", suspend=True)
    try:
        assert compute.resource is not None and compute.resource.spec.suspend is True
        assert compute.state == "Suspended"
        assert compute.is_ready() is False
    finally:
        run_sync(compute.delete(grace_period_seconds=5))


def test_a_compute_constructed_outside_a_loop_works_in_later_event_loops(local_client):
    compute = Compute("two-loops")

    async def use_it():
        await compute.ready(timeout=90)
        return (await compute.receive_tensors(count=1, parameters={"shape": "2,3"}))[0].shape

    loops: list = []
    try:
        assert run_on_a_new_loop(use_it(), loops) == torch.Size([2, 3])
        assert compute.is_ready() is True
        assert run_on_a_new_loop(use_it(), loops) == torch.Size([2, 3])  # a second loop: watch and client reconnect
    finally:
        run_sync(compute.delete(grace_period_seconds=5))
    assert loops[0] is not loops[1] and all(loop.is_closed() for loop in loops)


async def test_apply_errors_are_reraised_by_every_later_call(local_client, monkeypatch):
    monkeypatch.setenv("SKYTORCH_BACKEND", "nonsense")
    compute = Compute("doomed")
    with pytest.raises(Exception, match="SKYTORCH_BACKEND='nonsense'"):
        await compute.ready()
    with pytest.raises(Exception, match="SKYTORCH_BACKEND='nonsense'"):
        await compute.suspend()
    assert compute.state == "Failed"
    await compute.delete()  # nothing was created: nothing to delete, no error
    assert compute.state == "Deleted"


def test_sync_calls_work_inside_a_running_loop(local_client, repo_env):
    """As in a notebook cell: sync calls while the loop runs (through nest_asyncio, on that same loop).

    In a child process, because nest_asyncio patches asyncio for the whole process.
    """
    code = textwrap.dedent("""
        import asyncio
        from skytorch.client import Cluster, Compute
        from skytorch.client._sync import run_sync

        async def main():
            loop = asyncio.get_running_loop()
            compute = Compute("nested")
            # The first sync call runs in a plain callback that asyncio's own _run_once (not yet patched by
            # nest_asyncio) counted together with 5 more callbacks: the nested run must not starve that frame.
            first = loop.create_future()
            loop.call_soon(lambda: first.set_result(compute.is_ready()))
            for _ in range(5):
                loop.call_soon(lambda: None)
            assert await first in (False, True)                # awaited the apply task on this very loop
            await compute.ready(timeout=90)
            assert compute.is_ready() is True
            assert compute._watch_task.get_loop() is loop       # background watch on the caller's loop
            assert Cluster(compute).is_ready() is True
            run_sync(compute.suspend())                         # what a magic or widget button does
            assert compute.state == "Suspended" and compute.is_ready() is False
            await compute.delete(grace_period_seconds=5)
            print("OK", compute.state)

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", code], env=repo_env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK Deleted" in result.stdout


async def test_ready_timeout_names_the_compute_and_its_conditions(local_client):
    compute = Compute("slowpoke", command=python_command(NEVER_READY))
    try:
        with pytest.raises(ComputeTimeoutError) as info:
            await compute.ready(timeout=1.5)
        message = str(info.value)
        assert isinstance(info.value, TimeoutError)
        assert "default/slowpoke" in message and "1.5s" in message
        assert "Ready=False (Starting" in message
    finally:
        await compute.delete(grace_period_seconds=1)


async def test_a_server_that_dies_fails_ready_at_once_with_its_stderr(local_client):
    compute = Compute("crasher", command=python_command(CRASH))
    try:
        with pytest.raises(ComputeError, match="(?s)crasher.*exited with code 7.*fatal: out of widgets"):
            await compute.ready(timeout=120)
        assert compute.state == "Failed"
        assert [e.reason for e in compute.recent_events if e.type == "Warning"] == ["Failed"]
    finally:
        await compute.delete(grace_period_seconds=1)


async def test_async_with_deletes_when_the_body_raises(local_client):
    with pytest.raises(ZeroDivisionError):
        async with Compute("raiser") as compute:
            assert local_pid("raiser") is not None
            1 / 0
    assert compute.state == "Deleted" and local_pid("raiser") is None


async def test_async_with_deletes_when_the_body_is_cancelled(local_client):
    entered = asyncio.Event()
    holder = {}

    async def body():
        async with Compute("cancelled") as compute:
            holder["compute"] = compute
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await asyncio.wait_for(entered.wait(), 90)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert holder["compute"].state == "Deleted" and local_pid("cancelled") is None


async def test_async_with_deletes_when_ready_fails(local_client):
    compute = Compute("never", command=python_command(CRASH))
    with pytest.raises(ComputeError, match="never"):
        async with compute:
            raise AssertionError("the body must not run")
    assert compute.state == "Deleted" and await _config.resolved_backend().get("never") is None


async def test_on_events_sync_async_and_raising_callbacks(local_client, caplog):
    sync_seen, async_seen = [], []

    def sync_cb(event):
        sync_seen.append(event.reason)
        raise RuntimeError("a broken callback")

    async def async_cb(event):
        await asyncio.sleep(0)
        async_seen.append((event.type, event.reason, event.involved_object.kind, event.involved_object.name))

    caplog.set_level(logging.INFO)
    a = Compute("events-sync", on_events=sync_cb)
    b = Compute("events-async", on_events=async_cb)
    c = Compute("events-log", on_events=log_event)
    async with Cluster(a, b, c):
        pass
    assert sync_seen[:3] == ["Created", "Started", "Ready"]  # the raising callback did not stop the stream
    assert "on_events callback of Compute default/events-sync raised" in caplog.text
    assert async_seen[:3] == [("Normal", r, "Compute", "events-async") for r in ("Created", "Started", "Ready")]
    assert "Compute default/events-log: Normal Ready" in caplog.text


async def test_events_are_not_repeated_across_watch_restarts(local_client):
    seen = []
    compute = Compute("restarts", on_events=lambda e: seen.append(e.metadata.uid))
    try:
        await compute.ready(timeout=90)
        await compute._stop_background()  # drop the streams, as a new event loop would
        compute.start_watching()          # the backend replays its events from the start
        await compute.suspend()
        await compute.resume(timeout=90)
        assert len(seen) == len(set(seen))
        assert [e.reason for e in compute.recent_events] == [
            "Created", "Started", "Ready", "Suspended", "Killing", "Resumed", "Started", "Ready"]
    finally:
        await compute.delete(grace_period_seconds=5)


async def test_suspend_resume_and_delete_twice(local_client, caplog):
    compute = Compute("pausable")
    await compute.ready(timeout=90)
    first_pid = local_pid("pausable")
    await compute.suspend()
    assert compute.state == "Suspended" and compute.endpoint is None and local_pid("pausable") is None
    with pytest.raises(ComputeError, match="not ready"):
        await compute.send_tensors(torch.ones(1))
    assert (await compute.resume(timeout=90)) is compute
    assert compute.state == "Ready" and local_pid("pausable") not in (None, first_pid)
    assert (await compute.receive_tensors(count=1, parameters={"shape": "1"}))[0].shape == torch.Size([1])
    await compute.delete(grace_period_seconds=5)
    caplog.set_level(logging.WARNING)
    await compute.delete()
    assert "default/pausable was not found when deleting it" in caplog.text


async def test_cluster_readies_in_parallel_and_streams_to_all(local_client):
    async with Cluster(Compute("c-1"), Compute("c-2"), Compute("c-3")) as cluster:
        c1, c2, c3 = cluster
        # sync API from a thread: calling it on this loop would patch asyncio (nest_asyncio) for the whole session
        assert await asyncio.to_thread(cluster.is_ready) is True
        tensor = torch.randn(100, 100)
        responses = await asyncio.gather(*(c.send_tensors(tensor) for c in cluster))
        assert all(r.success for r in responses)
        assert len({c.endpoint for c in cluster}) == 3
    assert [c.state for c in (c1, c2, c3)] == ["Deleted"] * 3
    assert server_children() == []


async def test_cluster_deletes_every_compute_when_one_fails_to_become_ready(local_client):
    good = Compute("good-one")
    bad = Compute("bad-one", command=python_command(CRASH))
    with pytest.raises(ComputeError, match="bad-one"):
        async with Cluster(good, bad):
            raise AssertionError("the body must not run")
    assert good.state == bad.state == "Deleted"
    assert server_children() == []


async def test_cluster_groups_several_failures_and_deletes_all(local_client):
    cluster = Cluster(Compute("crash-a", command=python_command(CRASH)),
                      Compute("crash-b", command=python_command(CRASH)),
                      Compute("fine"))
    with pytest.raises(ExceptionGroup) as info:
        async with cluster:
            raise AssertionError("the body must not run")
    assert sorted(e.compute for e in info.value.exceptions) == ["default/crash-a", "default/crash-b"]
    assert all("exited with code 7" in str(e) for e in info.value.exceptions)
    assert "2 of 3 Computes failed to become ready" in str(info.value)
    assert [c.state for c in cluster] == ["Deleted"] * 3


async def test_cluster_ready_timeouts_are_grouped(local_client):
    cluster = Cluster(Compute("slow-a", command=python_command(NEVER_READY)),
                      Compute("slow-b", command=python_command(NEVER_READY)))
    try:
        with pytest.raises(ExceptionGroup) as info:
            await cluster.ready(timeout=1.5)
        assert all(isinstance(e, ComputeTimeoutError) for e in info.value.exceptions)
        assert sorted(e.compute for e in info.value.exceptions) == ["default/slow-a", "default/slow-b"]
    finally:
        await cluster.delete(grace_period_seconds=1)
    assert [c.state for c in cluster] == ["Deleted"] * 2


async def test_subscribers_see_state_resource_event_and_transfer(local_client):
    seen: dict[str, int] = {}
    compute = Compute("observed")

    def broken(c, what):
        raise ValueError("a broken subscriber")

    unsubscribe = compute.subscribe(lambda c, what: seen.__setitem__(what, seen.get(what, 0) + 1))
    compute.subscribe(broken)
    try:
        await compute.ready(timeout=90)
        await compute.send_tensors(torch.ones(1000))
        assert {"state", "resource", "event", "transfer"} <= set(seen)
        unsubscribe()
        before = dict(seen)
        await compute.send_tensors(torch.ones(10))
        assert seen == before
    finally:
        await compute.delete(grace_period_seconds=5)


async def test_applying_the_same_compute_twice_is_harmless_and_a_change_restarts_it(local_client):
    first = Compute("twice", env={"MODE": "a"})
    await first.ready(timeout=90)
    pid = local_pid("twice")
    second = Compute("twice", env={"MODE": "a"})  # the same Compute again, e.g. a re-run notebook cell
    await second.ready(timeout=90)
    assert local_pid("twice") == pid and second.endpoint == first.endpoint
    assert second.resource.metadata.generation == 1
    third = Compute("twice", env={"MODE": "b"})   # a changed spec: the server restarts with it
    await third.ready(timeout=90)
    assert local_pid("twice") != pid and third.resource.metadata.generation == 2
    assert third.resource.spec.env == [{"name": "MODE", "value": "b"}]
    await third.delete(grace_period_seconds=5)


async def test_ready_on_a_suspended_compute_says_to_resume(local_client):
    compute = Compute("parked", suspend=True)
    try:
        with pytest.raises(ComputeError, match="parked is suspended: await compute.resume()"):
            await compute.ready(timeout=60)
        await compute.resume(timeout=90)
        assert compute.state == "Ready"
    finally:
        await compute.delete(grace_period_seconds=5)


def test_a_compute_made_in_one_event_loop_works_in_the_next(local_client):
    holder = {}

    async def first():
        compute = Compute("mover")
        holder["compute"] = await compute.ready(timeout=90)
        return (await compute.receive_tensors(count=1, parameters={"shape": "2"}))[0].shape

    async def second():
        compute = holder["compute"]
        (out,) = await compute.stream_tensors(torch.arange(3.0))  # the tensor client reconnects on this loop
        await compute.suspend()                                   # the watch restarts on this loop
        await compute.resume(timeout=90)
        return out.tolist(), compute.state

    loops: list = []
    try:
        assert run_on_a_new_loop(first(), loops) == torch.Size([2])
        assert run_on_a_new_loop(second(), loops) == ([0.0, 1.0, 2.0], "Ready")
    finally:
        run_sync(holder["compute"].delete(grace_period_seconds=5))
    assert holder["compute"].state == "Deleted"
    assert loops[0] is not loops[1] and all(loop.is_closed() for loop in loops)
