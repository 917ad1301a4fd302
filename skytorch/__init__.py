"""SkyTorch: PyTorch compute on Kubernetes from a notebook, with tensors streamed over gRPC.

The public API lives in :mod:`skytorch.client`. ``%load_ext skytorch`` loads the
notebook magics (:mod:`skytorch.notebook`); importing this package imports
neither IPython nor ipywidgets.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_ipython_extension(ipython):  # pragma: no cover - exercised through real kernels
    """Entry point of ``%load_ext skytorch``: registers the magics and kernel lifecycle."""
    from skytorch.notebook import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):  # pragma: no cover - exercised through real kernels
    """Entry point of ``%unload_ext skytorch``."""
    from skytorch.notebook import unload_ipython_extension as _unload

    _unload(ipython)
