"""The one error hierarchy of SkyTorch.

Every error a user can cause or meet says what failed, on which Compute (or
which endpoint), and what to do about it. Subpackages raise these, never a bare
library exception, for mistakes a user can make.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpclib only for the annotation: importing skytorch.errors stays light
    from grpclib.const import Status


class SkyTorchError(Exception):
    """Base class of every SkyTorch error."""


class ComputeError(SkyTorchError):
    """An operation on a named Compute failed.

    ``compute`` is the Compute's name (``namespace/name`` where known).
    """

    def __init__(self, message: str, *, compute: str | None = None) -> None:
        super().__init__(message)
        self.compute = compute


class ComputeNotReadyError(ComputeError):
    """A tensor call was made on a Compute that is not ready (await ``ready()`` first)."""


class ComputeTimeoutError(ComputeError, TimeoutError):
    """A Compute did not become ready in time; the message lists its last conditions."""


class KubernetesApiError(ComputeError):
    """The Kubernetes API refused or failed a request about a Compute.

    ``status`` is the HTTP status (403 for RBAC, 500 for a server error, ...),
    ``reason`` the API's reason and ``message`` its explanation.
    """

    def __init__(
        self,
        message: str,
        *,
        compute: str | None = None,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, compute=compute)
        self.status = status
        self.reason = reason


class BackendError(SkyTorchError):
    """The backend a Compute runs on (Kubernetes or local processes) failed or is misconfigured."""


class TransportError(SkyTorchError):
    """A tensor call over gRPC failed.

    ``status`` is the gRPC status (a ``grpclib.const.Status``, or ``None`` when
    the connection itself failed), ``target`` the ``host:port`` called.
    """

    def __init__(self, message: str, *, status: Status | None = None, target: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.target = target


class ServerUnavailableError(TransportError):
    """The tensor server at ``target`` could not be reached."""


class UnsupportedTensorError(TransportError, TypeError):
    """A tensor cannot go on the wire (sparse, quantized, nested, meta, or an unsupported dtype).

    Raised before anything is sent; it is also a ``TypeError``.
    """


class TensorRejectedError(TransportError):
    """The tensor server refused a call: bad input (INVALID_ARGUMENT), an unknown id
    (NOT_FOUND) or a size over its limits (RESOURCE_EXHAUSTED). ``status`` says which."""


class RemoteHandlerError(TransportError):
    """The server's tensor handler raised while processing a streamed tensor; the
    message carries the handler's exception."""


class TransportTimeoutError(TransportError, TimeoutError):
    """A tensor call did not complete before its deadline."""


class ComputeSpecError(ComputeError, ValueError):
    """A Compute was given an invalid name or setting (raised before any I/O); also a ``ValueError``."""
