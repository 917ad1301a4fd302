"""``%skytorch`` / ``%%skytorch`` in a real IPython kernel, on the local backend.

One kernel serves the module (starting one costs seconds of the CPU budget);
each test names its own Computes and removes them.
"""

from __future__ import annotations

import ast
import threading
import time

import pytest

from tests.plugins.notebook import KernelSession, kernel_env

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("magics")
    session = KernelSession(kernel_env(tmp), tmp)
    try:
        session.execute("%load_ext skytorch\n"
                        "from skytorch.notebook.lifecycle import registry\n"
                        "from skytorch.client import current_backend\n"
                        "async def names():\n"
                        "    return sorted(r.metadata.name for r in await (await current_backend()).list())")
        yield session
    finally:
        session.shutdown()


def names(kernel: KernelSession) -> list[str]:
    """Names of the Computes that exist on the kernel's backend."""
    return ast.literal_eval(kernel.execute("await names()").value())


def test_help_lists_every_command(kernel: KernelSession):
    result = kernel.execute("%skytorch?")
    pages = [p["data"]["text/plain"] for p in result.reply.get("payload", []) if p.get("source") == "page"]
    assert pages, result.reply
    for text in ("usage: %skytorch up", "--image IMAGE", "--keep", "usage: %skytorch gc", "usage: %%skytorch",
                 "--ephemeral", "usage: %skytorch init"):
        assert text in pages[0]


@pytest.mark.parametrize("line, problem", [
    ("%skytorch up", "the following arguments are required: NAME"),
    ("%skytorch up Bad_Name", "not an RFC 1035 label"),
    ("%skytorch up nbm-bad --env NOEQUALS", "expected KEY=VALUE"),
    ("%skytorch up nbm-bad --as 1var", "not a Python variable name"),
    ("%skytorch frobnicate nbm-bad", "invalid choice: 'frobnicate'"),
    ("%skytorch init --backend mars", "invalid choice: 'mars'"),
    ("%%skytorch nbm-bad --bogus\n1", "unrecognized arguments: --bogus"),
])
def test_bad_arguments_print_usage_and_create_nothing(kernel: KernelSession, line: str, problem: str):
    result = kernel.execute(line)
    assert problem in result.stderr
    assert "usage: %" in result.stderr
    assert result.error is None
    assert "nbm-bad" not in names(kernel)
    assert kernel.execute("len([c for c in registry().computes() if c.name == 'nbm-bad'])").value() == "0"


def test_up_binds_displays_and_returns_at_once(kernel: KernelSession):
    result = kernel.execute("%skytorch up nbm-up --env GREETING=hi --resources cpu=1")
    widget_views = result.data("application/vnd.jupyter.widget-view+json")
    assert widget_views, result.outputs
    assert "Compute nbm-up [" in result.data("text/plain")[0]
    # bound to nbm_up; did not wait for Ready
    assert kernel.execute("nbm_up.env, nbm_up.resources").value() == "({'GREETING': 'hi'}, {'cpu': '1'})"
    kernel.execute("await nbm_up.ready(timeout=120)")
    assert kernel.execute("nbm_up.is_ready()").value() == "True"  # sync entry point inside the running loop
    kernel.execute("%skytorch delete nbm-up")
    assert kernel.execute("nbm_up.state").value() == "'Deleted'"
    assert "nbm-up" not in names(kernel)


def test_up_wait_as_suspend_resume_delete(kernel: KernelSession):
    kernel.execute("%skytorch up nbm-life --wait --as life")
    assert kernel.execute("life.state").value() == "'Ready'"
    kernel.execute("%skytorch suspend nbm-life")
    assert kernel.execute("life.state").value() == "'Suspended'"
    kernel.execute("%skytorch resume nbm-life")
    assert kernel.execute("life.state").value() == "'Ready'"
    result = kernel.execute("%skytorch delete nbm-life nbm-nonexistent")
    assert "no Compute named nbm-nonexistent" in result.stderr
    assert kernel.execute("life.state").value() == "'Deleted'"
    assert "nbm-life" not in names(kernel)


def test_dashboard_rows_come_and_go_with_the_kernels_computes(kernel: KernelSession):
    kernel.execute("import skytorch.notebook\nboard = skytorch.notebook.dashboard()\nbefore = set(board.rows)")
    kernel.execute("%skytorch up nbm-dash-a --wait\n%skytorch up nbm-dash-b --wait")
    assert kernel.execute("sorted(set(board.rows) - before)").value() == "['nbm-dash-a', 'nbm-dash-b']"
    kernel.execute("%skytorch delete nbm-dash-a")
    assert kernel.execute("sorted(set(board.rows) - before)").value() == "['nbm-dash-b']"
    ls = kernel.execute("%skytorch ls")
    assert ls.data("application/vnd.jupyter.widget-view+json")
    assert "nbm-dash-b" in ls.value() and "ready" in ls.value()
    kernel.execute("%skytorch delete nbm-dash-b")
    assert "nbm-dash-b" not in kernel.execute("board.text()").value()


def test_down_deletes_all_but_kept(kernel: KernelSession):
    kernel.execute("%skytorch up nbm-down-1\n%skytorch up nbm-down-2\n%skytorch up nbm-kept --keep")
    assert kernel.execute("nbm_kept.labels['skytorch.dev/keep']").value() == "'true'"
    result = kernel.execute("%skytorch down")
    assert "nbm-down-1" in result.stdout and "nbm-down-2" in result.stdout and "kept: nbm-kept" in result.stdout
    left = names(kernel)
    assert "nbm-down-1" not in left and "nbm-down-2" not in left and "nbm-kept" in left
    kernel.execute("%skytorch delete nbm-kept")


def test_cell_magic_runs_the_body_with_top_level_await_then_deletes_ephemeral(kernel: KernelSession):
    result = kernel.execute(
        "%%skytorch nbm-cell --ephemeral\n"
        "import torch\n"
        "print('state in body:', compute.state)\n"
        "out = await compute.stream_tensors(torch.arange(6.0).reshape(2, 3))\n"
        "tuple(out[0].shape)"
    )
    assert "state in body: Ready" in result.stdout
    assert result.value() == "(2, 3)"
    assert kernel.execute("compute.state").value() == "'Deleted'"
    assert "nbm-cell" not in names(kernel)


def test_cell_magic_without_ephemeral_keeps_the_compute_and_reuses_it(kernel: KernelSession):
    kernel.execute("%%skytorch nbm-reuse --as worker\nfirst = worker")
    kernel.execute("%%skytorch nbm-reuse --as worker\nsame = worker is first")
    assert kernel.execute("same, worker.state").value() == "(True, 'Ready')"
    kernel.execute("%skytorch delete nbm-reuse")


def test_cell_magic_deletes_ephemeral_compute_on_error(kernel: KernelSession):
    result = kernel.execute("%%skytorch nbm-err --ephemeral\nraise ValueError('boom in body')", allow_error=True)
    assert result.error and result.error["ename"] == "ValueError" and "boom in body" in result.error["evalue"]
    assert kernel.execute("compute.state").value() == "'Deleted'"
    assert "nbm-err" not in names(kernel)


def test_cell_magic_deletes_ephemeral_compute_on_interrupt(kernel: KernelSession):
    kernel.execute("%skytorch up nbm-int --wait")  # ready beforehand, so the interrupt lands in the body

    def interrupt_soon() -> None:
        time.sleep(3)
        kernel.km.interrupt_kernel()

    thread = threading.Thread(target=interrupt_soon)
    thread.start()
    result = kernel.execute("%%skytorch nbm-int --ephemeral\nimport asyncio\nprint('sleeping', flush=True)\n"
                            "await asyncio.sleep(120)", allow_error=True, timeout=120)
    thread.join()
    assert result.error and result.error["ename"] == "KeyboardInterrupt"
    assert kernel.execute("compute.state").value() == "'Deleted'"
    assert "nbm-int" not in names(kernel)


def test_init_after_computes_exist_explains_itself_and_gc_finds_nothing_here(kernel: KernelSession):
    result = kernel.execute("%skytorch init --namespace team-a")
    assert "can only be called once" in result.stderr
    result = kernel.execute("%skytorch gc --dry-run")
    assert "No Computes left behind" in result.stdout


def test_sync_entry_points_run_on_the_kernels_own_loop(kernel: KernelSession):
    kernel.execute(
        "import asyncio, threading\n"
        "kernel_loop = asyncio.get_running_loop()\n"
        "seen = []\n"
        "%skytorch up nbm-loop --wait\n"
        "nbm_loop.subscribe(lambda c, what: seen.append((threading.current_thread() is threading.main_thread(),\n"
        "                                                asyncio.get_running_loop() is kernel_loop)))"
    )
    kernel.execute("%skytorch suspend nbm-loop")  # a magic: sync code, nested on the running loop
    kernel.execute("nbm_loop.is_ready()")
    kernel.execute("from skytorch.notebook.widgets import compute_widget\ncompute_widget(nbm_loop).resume_button.click()")
    assert kernel.execute("nbm_loop.state").value() == "'Ready'"
    assert kernel.execute("len(seen) >= 2, set(seen)").value() == "(True, {(True, True)})"
    kernel.execute("%skytorch delete nbm-loop")
