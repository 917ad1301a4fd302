"""``make demo`` runs the README's walkthrough on the local backend and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from tests.plugins.client import REPO


@pytest.mark.timeout(180)
def test_demo_runs_on_the_local_backend_and_cleans_up(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "none"))
    env.pop("SKYTORCH_BACKEND", None)
    proc = subprocess.Popen([sys.executable, "-m", "skytorch.demo", "--mib", "4"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: set[int] = set()
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "Both ready in" in out and "round trip identical" in out and "MB/s" in out
    assert "stored tensor back from each: identical" in out
    assert "Done: demo-a Deleted, demo-b Deleted" in out
    for line in out.splitlines():  # the servers it started are gone
        if "Started tensor server process" in line:
            children.add(int(line.split("process")[1].split()[0]))
    assert len(children) == 2
    assert not [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
