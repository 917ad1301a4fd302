"""How a Compute comes to life: one interface (:class:`Backend`), two implementations.

``kubernetes``: a Compute custom resource reconciled by the SkyTorch operator.
``local``: the embedded default, a tensor server child process on loopback.
"""

from skytorch.backends.base import Backend

__all__ = ["Backend"]
