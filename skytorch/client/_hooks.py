"""Extension points that the notebook layer plugs into.

``skytorch.client`` never imports IPython or ipywidgets. When a Compute is
created inside a Jupyter kernel, :func:`maybe_install_kernel_integration`
imports :mod:`skytorch.notebook.lifecycle` lazily, which registers itself here:
it adds the kernel's labels to :data:`default_labels` and appends a callback to
:data:`compute_created`, so every Compute of the kernel is tracked and cleaned
up with it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from skytorch.client.compute import Compute

logger = logging.getLogger(__name__)

#: Labels merged into the metadata of every Compute created in this process
#: (the notebook layer puts ``skytorch.dev/kernel`` and ``skytorch.dev/host`` here).
default_labels: dict[str, str] = {}

#: Called with each new Compute, right after construction started its apply.
compute_created: list[Callable[["Compute"], None]] = []

_kernel_integration_tried = False


def in_kernel() -> bool:
    """Whether this process is a running Jupyter kernel.

    Having imported ``ipykernel`` is not enough (a test runner or nbclient does
    that too): the kernel application must have been started. Nothing is
    imported to find out.
    """
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    return bool(kernelapp is not None and kernelapp.IPKernelApp.initialized())


def maybe_install_kernel_integration() -> None:
    """Inside a Jupyter kernel, load the notebook lifecycle once (a no-op elsewhere)."""
    global _kernel_integration_tried
    if _kernel_integration_tried or not in_kernel():
        return
    _kernel_integration_tried = True
    try:
        importlib.import_module("skytorch.notebook.lifecycle").install()
    except Exception:  # the notebook extras may be missing: the client still works
        logger.warning("Could not tie Computes to this kernel's lifecycle", exc_info=True)


def notify_created(compute: "Compute") -> None:
    """Run every :data:`compute_created` callback; one that raises is logged, not propagated."""
    for callback in list(compute_created):
        try:
            callback(compute)
        except Exception:
            logger.exception("compute_created callback %r failed for %s", callback, compute)
