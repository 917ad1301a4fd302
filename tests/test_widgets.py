"""The Compute widget and the Cluster dashboard, on real Computes of the local backend.

The widgets are built in this process (no kernel); every update they show comes
from the Compute's own watch and event stream through ``Compute.subscribe``:
the tests never call ``refresh()`` themselves.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from skytorch.client import Cluster, Compute, _config
from skytorch.notebook.widgets import (
    WIDGET_MIME,
    ClusterDashboard,
    ComputeWidget,
    cluster_mimebundle,
    compute_mimebundle,
    compute_widget,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def local_backend(monkeypatch: pytest.MonkeyPatch):
    """Every Compute of these tests is a local server process, stopped at the end."""
    monkeypatch.setenv("SKYTORCH_BACKEND", "local")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    _config._reset_for_tests()
    yield
    _config._reset_for_tests()


async def until(predicate, what: str, timeout: float = 60) -> None:
    """Wait (a hang guard, not a timing assertion) until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_compute_widget_follows_the_compute_to_ready_without_refresh_calls():
    compute = Compute("nbw-ready", image="example/skytorch:test")
    widget = compute_widget(compute)
    try:
        assert isinstance(widget, ComputeWidget)
        assert "nbw-ready" in widget.header.value
        assert "example/skytorch:test" in widget.header.value
        await compute.ready(timeout=120)
        await until(lambda: ">Ready<" in widget.header.value, "Ready badge")
        assert "local" in widget.header.value  # backend kind
        host, port = compute.endpoint
        assert f"{host}:{port}" in widget.details.value
        assert "Ready" in widget.conditions.value and "True" in widget.conditions.value
        await until(lambda: "skytorch-event" in widget.events.value, "an event")
        assert widget.resume_button.disabled and not widget.suspend_button.disabled
    finally:
        await compute.delete()
    await until(lambda: ">Deleted<" in widget.header.value, "Deleted badge")
    assert widget.delete_button.disabled


async def test_events_are_listed_newest_first_and_bounded():
    compute = Compute("nbw-events")
    widget = compute_widget(compute)
    try:
        await compute.ready(timeout=120)
        await compute.suspend()
        await until(lambda: compute.state == "Suspended", "Suspended")
        await until(lambda: len(compute.recent_events) >= 3, "events")
        items = widget.events.value.split('<li class="skytorch-event">')[1:]
        newest = compute.recent_events[-1]
        assert newest.reason in items[0]
        assert len(items) <= 8
    finally:
        await compute.delete()


async def test_two_displays_of_one_compute_are_one_model_and_carry_text_fallbacks():
    compute = Compute("nbw-twice")
    try:
        first = compute_mimebundle(compute, widget=True)
        second = compute_mimebundle(compute, widget=True)
        assert first[WIDGET_MIME]["model_id"] == second[WIDGET_MIME]["model_id"]
        await compute.ready(timeout=120)
        third = compute_mimebundle(compute, widget=True)
        assert third[WIDGET_MIME]["model_id"] == first[WIDGET_MIME]["model_id"]
        assert "nbw-twice" in third["text/plain"] and "[Ready]" in third["text/plain"]
        assert "nbw-twice" in third["text/html"] and ">Ready<" in third["text/html"]
    finally:
        await compute.delete()


async def test_outside_a_kernel_the_repr_is_text_and_html_only():
    compute = Compute("nbw-plain")
    try:
        await compute.ready(timeout=120)
        bundle = compute._repr_mimebundle_()
        assert WIDGET_MIME not in bundle
        assert "Compute nbw-plain [Ready]" in bundle["text/plain"]
        assert "endpoint: 127.0.0.1:" in bundle["text/plain"]
        assert "skytorch-compute" in bundle["text/html"]
    finally:
        await compute.delete()


async def test_progress_bar_shows_bytes_and_rate_of_a_transfer():
    compute = Compute("nbw-transfer")
    widget = compute_widget(compute)
    try:
        await compute.ready(timeout=120)
        assert widget.progress_box.layout.display == "none"
        await compute.send_tensors(torch.ones(1024, 1024))  # 4 MiB
        await until(lambda: widget.progress.value == 1.0, "progress at 100%")
        assert widget.progress_box.layout.display == "flex"
        label = widget.progress_label.value
        assert "send 4.0 MiB / 4.0 MiB" in label and "/s" in label and "(done)" in label
    finally:
        await compute.delete()


async def test_buttons_suspend_resume_and_delete_the_compute():
    compute = Compute("nbw-buttons")
    widget = compute_widget(compute)
    try:
        await compute.ready(timeout=120)
        widget.suspend_button.click()
        assert compute.state == "Suspended", widget.message.value
        assert ">Suspended<" in widget.header.value and not widget.resume_button.disabled
        widget.resume_button.click()
        assert compute.state == "Ready", widget.message.value
        widget.delete_button.click()
        assert compute.state == "Deleted", widget.message.value
        assert widget.delete_button.disabled
        backend = await _config.current_backend()
        assert await backend.get("nbw-buttons") is None
    finally:
        if compute.state != "Deleted":
            await compute.delete()


async def test_a_failing_button_shows_the_error_in_the_widget():
    # a server that exits at once: the Compute fails, and resuming it cannot make it ready
    compute = Compute("nbw-fail", command=["python", "-c", "import sys; sys.exit(3)"])
    widget = compute_widget(compute)
    try:
        await until(lambda: compute.state == "Failed", "Failed")
        assert ">Failed<" in widget.header.value
        widget.resume_button.disabled = False
        widget.resume_button.click()
        assert "resume failed" in widget.message.value and "nbw-fail" in widget.message.value
    finally:
        await compute.delete()


async def test_cluster_dashboard_counts_ready_rows_and_drops_a_deleted_row():
    cluster = Cluster(Compute("nbd-a"), Compute("nbd-b"), Compute("nbd-c"))
    board = ClusterDashboard(cluster, title="Cluster of 3")
    try:
        assert board.summary_text().endswith("/3 ready")
        await cluster.ready(timeout=120)
        await until(lambda: board.summary_text() == "3/3 ready", "3/3 ready")
        assert "3/3 ready" in board.summary.value
        row = board.rows["nbd-b"]
        assert "127.0.0.1:" in row.cells[3].value and ">Ready<" in row.cells[1].value
        row.delete_button.click()
        assert "nbd-b" not in board.rows and board.summary_text() == "2/2 ready"
        assert [r.name for r in board.table.children] == ["nbd-a", "nbd-c"]
        assert "2/2 ready" in board.text() and "nbd-b" not in board.html()
        board.suspend_all.click()
        assert {c.state for c in (cluster[0], cluster[2])} == {"Suspended"}
        assert board.summary_text() == "0/2 ready"
        board.delete_all.click()
        assert board.rows == {} and board.summary_text() == "0/0 ready"
    finally:
        board.close()
        await cluster.delete()


async def test_cluster_mimebundle_has_widget_and_fallbacks():
    cluster = Cluster(Compute("nbd-x"), Compute("nbd-y"))
    try:
        await cluster.ready(timeout=120)
        data = cluster_mimebundle(cluster, widget=True)
        assert WIDGET_MIME in data
        assert "2/2 ready" in data["text/plain"] and "nbd-x" in data["text/plain"]
        assert "2/2 ready" in data["text/html"]
        plain = cluster._repr_mimebundle_()
        assert WIDGET_MIME not in plain and "2/2 ready" in plain["text/plain"]
    finally:
        await cluster.delete()
