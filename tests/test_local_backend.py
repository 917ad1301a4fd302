"""The embedded local backend on its own: real ``python -m skytorch.server`` children on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch

from skytorch.backends.local import LocalBackend
from skytorch.errors import BackendError
from skytorch.resources import ComputeSpec, apply_manifest, env_list
from skytorch.transport import TensorClient
from tests.plugins.client import RECORD_THEN_SERVE, python_command, server_children

pytestmark = pytest.mark.timeout(120)


def manifest(name: str, **spec_fields) -> dict:
    labels = spec_fields.pop("metadata_labels", None)
    if "env" in spec_fields:
        spec_fields["env"] = env_list(spec_fields["env"])
    return apply_manifest(name, "default", ComputeSpec(**spec_fields), labels=labels)


async def until(watch, predicate, timeout: float = 60.0):
    """Consume ``watch`` until an item satisfies ``predicate``; return it."""
    async with asyncio.timeout(timeout):
        async for item in watch:
            if predicate(item):
                return item
    raise AssertionError("watch ended")


def reasons(backend: LocalBackend, name: str) -> list[str]:
    return [e.reason for e in backend._events.get(name, [])]


async def test_apply_starts_a_server_that_becomes_ready_and_serves(local_backend: LocalBackend):
    res = await local_backend.apply(manifest("alpha", image="ignored:latest", metadata_labels={"team": "ml"}))
    assert res.metadata.name == "alpha" and res.metadata.namespace == "default"
    assert res.spec.image == "ignored:latest" and not res.is_ready

    watch = local_backend.watch("alpha")
    ready = await until(watch, lambda r: r is not None and r.is_ready)
    await watch.aclose()
    cond = ready.condition("Ready")
    assert cond.reason == "ServerReady" and cond.last_transition_time
    host, port = local_backend.endpoint("alpha", 50051)
    assert host == "127.0.0.1" and 0 < port < 65536

    async with TensorClient(host, port) as client:
        assert await client.health()
    assert reasons(local_backend, "alpha") == ["Created", "Started", "Ready"]
    assert [r.metadata.name for r in await local_backend.list("team=ml")] == ["alpha"]
    assert await local_backend.list("team=other") == []


async def test_reapplying_the_same_spec_is_harmless(local_backend: LocalBackend):
    await local_backend.apply(manifest("same", env={"A": "1"}))
    watch = local_backend.watch("same")
    ready = await until(watch, lambda r: r is not None and r.is_ready)
    pid = local_backend.pids()["same"]
    again = await local_backend.apply(manifest("same", env={"A": "1"}))
    assert local_backend.pids()["same"] == pid
    assert again.metadata.resource_version == ready.metadata.resource_version
    assert again.metadata.generation == ready.metadata.generation
    await watch.aclose()


async def test_changed_env_restarts_the_server_with_the_new_settings(local_backend: LocalBackend, tmp_path):
    record = tmp_path / "record.json"
    env = {"RECORD_TO": str(record), "GREETING": "hello"}
    await local_backend.apply(manifest("envy", command=python_command(RECORD_THEN_SERVE), args=["--flag", "x"],
                                       env=env))
    watch = local_backend.watch("envy")
    await until(watch, lambda r: r is not None and r.is_ready)
    first = json.loads(record.read_text())
    assert first["env"]["GREETING"] == "hello"
    assert first["argv"] == ["--flag", "x"]
    pid = local_backend.pids()["envy"]

    res = await local_backend.apply(manifest("envy", command=python_command(RECORD_THEN_SERVE), args=["--flag", "x"],
                                             env={**env, "GREETING": "bonjour"}))
    assert res.metadata.generation == 2
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    ready = await until(watch, lambda r: r is not None and r.is_ready and r.metadata.generation == 2)
    assert ready.condition("Ready").observed_generation == 2
    assert json.loads(record.read_text())["env"]["GREETING"] == "bonjour"
    assert local_backend.pids()["envy"] != pid
    assert reasons(local_backend, "envy").count("Started") == 2
    assert "Killing" in reasons(local_backend, "envy")
    await watch.aclose()


@pytest.mark.parametrize("use_zygote, extra_env, forked", [
    (True, {}, True),                         # forked from the warm fork server
    (True, {"OMP_NUM_THREADS": "1"}, False),  # a start-up setting: spawned afresh so that it applies
    (False, {}, False),                       # fork server turned off
])
async def test_default_command_takes_args_and_env(tmp_path, use_zygote, extra_env, forked):
    """``args`` alone are extra flags of ``python -m skytorch.server``; ``env`` reaches the server."""
    (tmp_path / "doubling.py").write_text("def double(tensor, metadata):\n    return tensor * 2\n")
    backend = LocalBackend(stop_grace=5.0, use_zygote=use_zygote)
    try:
        await backend.apply(manifest("flags", args=["--handler", "doubling:double"],
                                     env={"PYTHONPATH": str(tmp_path), **extra_env}))
        watch = backend.watch("flags")
        await until(watch, lambda r: r is not None and r.is_ready)
        await watch.aclose()
        async with TensorClient(*backend.endpoint("flags", 50051)) as client:
            (out,) = await client.stream_tensors(torch.arange(4.0))
        assert out.tolist() == [0.0, 2.0, 4.0, 6.0]  # the --handler flag and PYTHONPATH took effect
        server = psutil.Process(backend.pids()["flags"])
        if forked:
            assert "skytorch.backends._local_zygote" in server.parent().cmdline()
        else:
            assert server.cmdline()[1:3] == ["-m", "skytorch.server"]
            assert server.cmdline()[-2:] == ["--handler", "doubling:double"]
            assert server.environ().get("OMP_NUM_THREADS") == extra_env.get("OMP_NUM_THREADS")
    finally:
        backend.shutdown()
    assert server_children() == []


async def test_suspend_stops_the_process_and_resume_starts_it_again(local_backend: LocalBackend):
    await local_backend.apply(manifest("sleepy"))
    watch = local_backend.watch("sleepy")
    await until(watch, lambda r: r is not None and r.is_ready)
    pid = local_backend.pids()["sleepy"]

    suspended = await local_backend.apply(manifest("sleepy", suspend=True))
    assert suspended.is_suspended and not suspended.is_ready
    assert "sleepy" not in local_backend.pids()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert (await local_backend.get("sleepy")) is not None  # the Compute stays
    with pytest.raises(BackendError, match="sleepy"):
        local_backend.endpoint("sleepy", 50051)

    await local_backend.apply(manifest("sleepy", suspend=False))
    resumed = await until(watch, lambda r: r is not None and r.is_ready)
    assert resumed.condition("Suspended").status == "False" and resumed.condition("Suspended").reason == "Resumed"
    assert local_backend.pids()["sleepy"] != pid
    assert reasons(local_backend, "sleepy") == [
        "Created", "Started", "Ready", "Suspended", "Killing", "Resumed", "Started", "Ready"]
    await watch.aclose()


async def test_a_server_that_dies_yields_a_warning_with_its_stderr(local_backend: LocalBackend):
    code = "import sys; sys.stderr.write('boom: cannot allocate the widget\\n'); sys.exit(3)"
    await local_backend.apply(manifest("crashy", command=python_command(code)))
    watch = local_backend.watch("crashy")
    failed = await until(watch, lambda r: r is not None and r.condition("Ready").reason == "Failed")
    await watch.aclose()
    assert "exited with code 3" in failed.condition("Ready").message
    warning = [e for e in local_backend._events["crashy"] if e.type == "Warning"]
    assert len(warning) == 1 and warning[0].reason == "Failed"
    assert "boom: cannot allocate the widget" in warning[0].message
    assert warning[0].involved_object.kind == "Compute" and warning[0].involved_object.name == "crashy"


async def test_delete_sends_sigterm_then_sigkill_after_the_grace_period(local_backend: LocalBackend, tmp_path):
    marker = tmp_path / "up"
    stubborn = f"""
        import os, pathlib, signal, time
        signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(marker)!r} + '.term').write_text('x'))
        pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))
        while True:
            time.sleep(0.1)
    """
    await local_backend.apply(manifest("stubborn", command=python_command(stubborn)))
    async with asyncio.timeout(30):
        while not marker.exists():
            await asyncio.sleep(0.05)
    proc = local_backend._records["stubborn"].server.proc
    assert await local_backend.delete("stubborn", grace_period_seconds=1) is True
    assert (tmp_path / "up.term").exists()  # SIGTERM came first...
    assert proc.returncode == -signal.SIGKILL  # ...then SIGKILL once the grace period was over
    assert await local_backend.get("stubborn") is None
    assert await local_backend.delete("stubborn") is False  # a second delete: not found, not an error


async def test_delete_of_a_server_that_drains_on_sigterm_is_clean(local_backend: LocalBackend):
    await local_backend.apply(manifest("tidy"))
    watch = local_backend.watch("tidy")
    await until(watch, lambda r: r is not None and r.is_ready)
    proc = local_backend._records["tidy"].server.proc
    assert await local_backend.delete("tidy", grace_period_seconds=30) is True
    assert proc.returncode == 0  # exited by itself on SIGTERM, not killed
    assert await until(watch, lambda r: r is None) is None
    await watch.aclose()


async def test_events_stream_replays_existing_events_then_follows(local_backend: LocalBackend):
    await local_backend.apply(manifest("talky"))
    seen = []
    async with asyncio.timeout(60):
        async for event in local_backend.events("talky"):
            seen.append(event.reason)
            if event.reason == "Ready":
                break
    assert seen == ["Created", "Started", "Ready"]
    again = local_backend.events("talky")
    assert [(await anext(again)).reason for _ in range(3)] == seen
    await again.aclose()


def test_children_die_with_a_parent_killed_by_sigkill(tmp_path, repo_env):
    """PR_SET_PDEATHSIG: a parent that is SIGKILLed (no atexit, no cleanup) takes its servers with it."""
    pid_file = tmp_path / "pids.json"
    parent_code = textwrap.dedent(f"""
        import asyncio, json, time
        from skytorch.client import Compute, Cluster
        async def main():
            cluster = Cluster(Compute("orphan-a"), Compute("orphan-b"))
            await cluster.ready(timeout=90)
            from skytorch.client._config import resolved_backend
            open({str(pid_file)!r}, "w").write(json.dumps(resolved_backend().pids()))
            time.sleep(600)
        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=repo_env, stderr=subprocess.PIPE)
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 90
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None, parent.stderr.read().decode()
            assert time.monotonic() < deadline, "the parent's Computes did not become ready"
            time.sleep(0.1)
        pids = json.loads(pid_file.read_text())
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids.values())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        alive = list(pids.values())
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.05)
        assert alive == [], f"servers outlived their SIGKILLed parent: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stderr.close()
        for pid in pids.values():  # if the test failed, do not leave orphans behind
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
    assert server_children() == []


async def test_a_broken_fork_server_explains_itself(tmp_path, monkeypatch):
    """If the fork server cannot even start (say a dependency is missing), the Compute says why."""
    broken = tmp_path / "grpclib"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('grpclib is broken in this environment')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    backend = LocalBackend(stop_grace=5.0, use_zygote=True)
    try:
        await backend.apply(manifest("unlucky"))
        watch = backend.watch("unlucky")
        failed = await until(watch, lambda r: r is not None and r.condition("Ready").reason == "Failed")
        await watch.aclose()
        message = failed.condition("Ready").message
        assert "fork server exited with code 1" in message
        assert "grpclib is broken in this environment" in message
        (warning,) = [e for e in backend._events["unlucky"] if e.type == "Warning"]
        assert warning.reason == "Failed" and "grpclib is broken in this environment" in warning.message
    finally:
        backend.shutdown()
    assert server_children() == []
