"""``02-cluster-dashboard`` in JupyterLab, in headless Debian Chromium driven by Playwright.

Runs every cell through JupyterLab's own command, checks that the dashboard
widgets render "3/3 ready", deletes one Compute with its row's Delete button,
checks that its row goes, and saves a screenshot under ``artifacts/``.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any, Iterator

import pytest

from tests.plugins.notebook import (
    ARTIFACTS,
    copy_notebook,
    jupyterlab,
    kernel_env,
    launch_chromium,
    save_artifact_path,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}"""


@contextlib.contextmanager
def notebook_running_in_lab(notebook: str, tmp_path: pathlib.Path) -> Iterator[Any]:
    """Open ``notebooks/<notebook>`` in JupyterLab in Chromium, start running all its cells, yield the page."""
    root = tmp_path / "root"
    copy_notebook(notebook, root)
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    with jupyterlab(root, kernel_env(tmp_path), tmp_path / "jupyterlab.log") as lab, launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(180_000)
        page.goto(f"{lab.url}/lab/tree/{notebook}?token={lab.token}")
        page.wait_for_function(KERNEL_IDLE, timeout=180_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        yield page


def test_dashboard_in_jupyterlab_shows_3_of_3_ready_and_a_row_goes_on_delete(tmp_path):
    shot = ARTIFACTS / "browser" / "02-cluster-dashboard-after-delete.png"
    before = ARTIFACTS / "browser" / "02-cluster-dashboard-3-of-3-ready.png"
    with notebook_running_in_lab("02-cluster-dashboard.ipynb", tmp_path) as page:
        summaries = page.locator(".jp-OutputArea .skytorch-summary")
        # the Cluster's table and this kernel's dashboard: both reach 3/3 through pushed updates
        page.locator(".jp-OutputArea .skytorch-summary", has_text="3/3 ready").nth(1).wait_for()
        assert summaries.count() == 2
        assert page.locator(".jp-OutputArea .skytorch-row").count() == 6
        page.wait_for_function(KERNEL_IDLE)  # every cell ran (the last ones assert in the kernel)

        page.locator(".skytorch-dashboard").first.scroll_into_view_if_needed()
        page.screenshot(path=str(before))
        rows = page.locator(".jp-OutputArea .skytorch-row-dash-2")
        assert rows.count() == 2
        rows.first.get_by_role("button", name="Delete").click()
        page.wait_for_function(
            "() => document.querySelectorAll('.jp-OutputArea .skytorch-row-dash-2').length === 0")
        page.locator(".jp-OutputArea .skytorch-summary", has_text="2/2 ready").nth(1).wait_for()
        assert page.locator(".jp-OutputArea .skytorch-row").count() == 4
        assert page.locator(".jp-OutputArea .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                            has_text="Traceback").count() == 0

        page.locator(".skytorch-dashboard").first.scroll_into_view_if_needed()
        page.screenshot(path=str(shot), full_page=True)
    save_artifact_path(before)
    save_artifact_path(shot)
    assert shot.stat().st_size > 10_000


def test_compute_widget_in_jupyterlab_follows_the_quickstart_to_the_end(tmp_path):
    shot = ARTIFACTS / "browser" / "01-quickstart-compute-widget.png"
    with notebook_running_in_lab("01-quickstart.ipynb", tmp_path) as page:
        widget = page.locator(".jp-OutputArea .skytorch-compute-widget")
        # the 16 MiB send moves the progress bar; the last cell deletes the Compute
        widget.locator(".skytorch-transfer", has_text="send 16.0 MiB / 16.0 MiB").wait_for()
        widget.locator(".skytorch-state", has_text="Deleted").wait_for()
        page.wait_for_function(KERNEL_IDLE)
        assert widget.count() == 1
        assert widget.get_by_role("button", name="Delete").is_disabled()
        assert widget.locator(".skytorch-event").count() >= 2
        widget.scroll_into_view_if_needed()
        page.screenshot(path=str(shot))
    save_artifact_path(shot)
