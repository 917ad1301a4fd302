"""The notebooks under ``notebooks/`` run top to bottom headless (nbclient, a real kernel, local backend).

Any cell error fails the test (the notebooks assert what they show). The
notebooks are committed with their outputs cleared.
"""

from __future__ import annotations

import nbformat
import psutil
import pytest

from tests.plugins.notebook import NOTEBOOKS, copy_notebook, kernel_env, run_notebook

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

NAMES = ["01-quickstart.ipynb", "02-cluster-dashboard.ipynb", "03-magics.ipynb"]
WIDGET = "application/vnd.jupyter.widget-view+json"


def _outputs(nb) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_with_outputs_cleared(name: str):
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not cleared"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_on_the_local_backend(name: str, tmp_path):
    path = copy_notebook(name, tmp_path / "work")
    before = {p.pid for p in psutil.process_iter()}
    nb = run_notebook(path, kernel_env(tmp_path), tmp_path / "work", timeout=300)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    widgets = [o for o in outputs if WIDGET in o.get("data", {})]
    assert widgets, f"{name} displayed no widget"
    assert all("text/plain" in o["data"] and "text/html" in o["data"] for o in widgets)
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    if name == "01-quickstart.ipynb":
        assert "Compute quickstart [" in text and "ready at ('127.0.0.1'" in text
    elif name == "02-cluster-dashboard.ipynb":
        assert "3/3 ready" in text
    else:
        assert "usage: %skytorch up" in text and "Deleted 1 Compute(s): magic-demo; kept: magic-kept" in text
    # the kernel is gone, and so is every server it started
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before
                 and "skytorch.server" in " ".join(p.info["cmdline"] or [])]
    psutil.wait_procs(leftovers, timeout=20)
    assert not [p for p in leftovers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
