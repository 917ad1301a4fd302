"""The notebook toolkit: live widgets, ``%skytorch`` magics, Computes tied to the kernel.

``%load_ext skytorch`` calls :func:`load_ipython_extension`, which registers the
``%skytorch`` / ``%%skytorch`` magics and ties this kernel's Computes to its life
(:func:`skytorch.notebook.lifecycle.install`). This package is the only part of
SkyTorch that imports IPython and ipywidgets.

Public API:

- :func:`dashboard` (``all=False``): a live table of this kernel's Computes.
- :func:`skytorch.notebook.widgets.compute_mimebundle` / ``cluster_mimebundle``:
  what a Compute / Cluster shows as a cell's value.
- :func:`skytorch.notebook.lifecycle.collect_garbage`: ``%skytorch gc``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["dashboard", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics and the kernel lifecycle (``%load_ext skytorch``)."""
    from skytorch.notebook import lifecycle
    from skytorch.notebook.magics import SkyTorchMagics

    lifecycle.install()
    ipython.register_magics(SkyTorchMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics (``%unload_ext skytorch``); Computes stay tied to the kernel."""
    manager = getattr(ipython, "magics_manager", None)
    if manager is None:  # pragma: no cover
        return
    for kind in ("line", "cell"):
        manager.magics.get(kind, {}).pop("skytorch", None)


def dashboard(all: bool = False) -> Any:  # noqa: A002 - the issue names the flag ``all``
    """A live dashboard of this kernel's Computes (``all=True``: the whole namespace)."""
    from skytorch.notebook.widgets import dashboard as _dashboard

    return _dashboard(all=all)
