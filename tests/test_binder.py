"""A Binder-style launch: a fresh virtual environment built from ``binder/`` alone runs 01-quickstart.

What repo2docker does, step by step: ``pip install -r binder/requirements.txt``
from the repository root into a new environment, then every process (here: the
kernel) is started through ``binder/start``. The kernel runs in that environment
only (no PYTHONPATH to the checkout, run outside it), and ``SKYTORCH_BACKEND`` is
set to ``kubernetes`` outside, so the notebook passes only if ``binder/start``
selects the local backend.

This machine reaches no package index but its own (configured in pip), so the
``--extra-index-url`` lines of the requirements (PyTorch's CPU index, used on a
real Binder) are left out here; pip resolves ``torch==2.13.0`` to the local CPU
wheel instead. Everything else is used as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.plugins.notebook import REPO, copy_notebook, run_notebook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

BINDER = REPO / "binder"


def test_fresh_environment_from_binder_runs_the_quickstart(tmp_path, monkeypatch):
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    start = BINDER / "start"
    assert os.access(start, os.X_OK), "binder/start must be executable"

    venv = tmp_path / "binder-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    requirements = tmp_path / "requirements.txt"
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    requirements.write_text("\n".join(l for l in lines if not l.strip().startswith(("--extra-index-url",
                                                                                       "--index-url"))) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], cwd=REPO, env=env,
                   check=True, timeout=1200)

    probe = subprocess.run(
        [str(python), "-c", "import skytorch, torch, ipywidgets, ipykernel; print(skytorch.__file__, torch.__version__)"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True, timeout=120)
    where, torch_version = probe.stdout.split()
    assert where.startswith(str(venv)), f"skytorch imported from {where}, not from the fresh environment"
    assert "+cu" not in torch_version

    # a kernelspec that starts the kernel the way repo2docker starts processes: through binder/start
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(start), str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (binder)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    path = copy_notebook("01-quickstart.ipynb", work)
    kernel_env = {**env, "SKYTORCH_BACKEND": "kubernetes", "JUPYTER_PATH": str(tmp_path / "jupyter"),
                  "HOME": str(tmp_path)}
    kernel_env.pop("KUBECONFIG", None)
    nb = run_notebook(path, kernel_env, work, timeout=600)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "ready at ('127.0.0.1'" in text
