"""The one interface every backend implements.

A backend is how a Compute comes to life: ``kubernetes`` (a custom resource that
an operator reconciles) or ``local`` (a ``python -m skytorch.server`` child
process on loopback). :class:`skytorch.client.Compute` talks to a backend only
through this interface, so the same notebook works on both.

Rules every implementation follows:

- All methods are coroutines or async iterators, and may be called from
  different event loops one after another (a sync constructor runs a short loop
  of its own, then the user's ``asyncio.run`` runs another). Anything bound to a
  loop (HTTP sessions, gRPC channels, tasks) is created per loop and closed with it.
- Errors are :mod:`skytorch.errors` classes naming the Compute, never a bare
  library exception for something a user can cause.
- Streams (:meth:`Backend.watch`, :meth:`Backend.events`) run until the caller
  stops iterating or cancels; they recover from expired versions and dropped
  connections by themselves, without missing a transition or repeating an event.
"""

from __future__ import annotations

import abc
from typing import Any, AsyncIterator, ClassVar, Mapping

from skytorch.resources import ComputeResource


class Backend(abc.ABC):
    """Creates, watches and deletes Computes in one namespace."""

    #: ``"kubernetes"`` or ``"local"``; shown in widgets and logs.
    kind: ClassVar[str]

    #: The namespace Computes of this backend live in.
    namespace: str

    @abc.abstractmethod
    async def apply(self, manifest: Mapping[str, Any]) -> ComputeResource:
        """Create or update a Compute from a full apply body (see :func:`skytorch.resources.apply_manifest`).

        Idempotent: applying the same body twice changes nothing. Returns the
        object as stored.
        """

    @abc.abstractmethod
    async def get(self, name: str) -> ComputeResource | None:
        """The Compute as stored now, or ``None`` if there is none of that name."""

    @abc.abstractmethod
    async def list(self, label_selector: str | None = None) -> list[ComputeResource]:
        """Every Compute of the namespace, optionally filtered by a label selector (``k=v,k2=v2``)."""

    @abc.abstractmethod
    def watch(self, name: str) -> AsyncIterator[ComputeResource | None]:
        """Yield the Compute's current state, then each change to it.

        The first item comes from a fresh read (``None`` if it does not exist);
        every later item is the object after a change, or ``None`` once it is
        deleted. Runs until the caller stops; an expired watch or a dropped
        connection is resumed from a fresh read without the caller noticing.
        """

    @abc.abstractmethod
    async def delete(self, name: str, grace_period_seconds: int = 30) -> bool:
        """Delete the Compute. Returns ``False`` if it did not exist (not an error)."""

    @abc.abstractmethod
    def events(self, name: str) -> AsyncIterator[Any]:
        """Yield each Kubernetes Event about this Compute (``V1Event``/``CoreV1Event`` objects).

        Events that exist already come first, then new ones as they happen;
        none twice, also across watch restarts. Runs until the caller stops.
        """

    @abc.abstractmethod
    def endpoint(self, name: str, port: int) -> tuple[str, int]:
        """Where the Compute's tensor server listens when no host override is given."""

    async def close(self) -> None:
        """Release what this backend holds for the running event loop (sessions, tasks)."""
