"""``Cluster``: several Computes made ready, and deleted, in parallel."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterator, overload

from skytorch.client._sync import run_sync
from skytorch.client.compute import Compute, _shielded

logger = logging.getLogger(__name__)


def _raise_failures(failures: list[BaseException], what: str, total: int) -> None:
    """Nothing for no failure, the error itself for one, an ``ExceptionGroup`` for several."""
    if not failures:
        return
    if len(failures) == 1:
        raise failures[0]
    raise ExceptionGroup(f"{len(failures)} of {total} Computes failed to {what}",
                         [f if isinstance(f, Exception) else RuntimeError(repr(f)) for f in failures])


class Cluster:
    """A fixed sequence of :class:`Compute` objects managed together.

    ``ready()`` and ``delete()`` run on every Compute in parallel; several failures
    come out as one ``ExceptionGroup`` (a single failure as itself). ``async with
    Cluster(a, b) as (a, b)`` waits for all to be ready and deletes all on exit,
    also when the body raises, is cancelled, or one Compute never became ready.
    """

    def __init__(self, *computes: Compute) -> None:
        for index, compute in enumerate(computes):
            if not isinstance(compute, Compute):
                raise TypeError(f"Cluster: argument {index} is {type(compute).__name__}, not a Compute")
        names = [c.name for c in computes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Cluster: Compute names must be unique, {', '.join(duplicates)} given more than once")
        self._computes: tuple[Compute, ...] = tuple(computes)

    # ------------------------------------------------------------------ sequence

    def __iter__(self) -> Iterator[Compute]:
        return iter(self._computes)

    def __len__(self) -> int:
        return len(self._computes)

    @overload
    def __getitem__(self, index: int) -> Compute: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Compute, ...]: ...

    def __getitem__(self, index: int | slice) -> Compute | tuple[Compute, ...]:
        return self._computes[index]

    def __repr__(self) -> str:
        return f"Cluster({', '.join(repr(c) for c in self._computes)})"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The notebook widget (from :mod:`skytorch.notebook.widgets`), with text fallbacks."""
        try:
            from skytorch.notebook.widgets import cluster_mimebundle
        except ImportError:
            return {"text/plain": repr(self)}
        return cluster_mimebundle(self, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    async def _all(self, call: Callable[[Compute], Awaitable[Any]]) -> list[BaseException]:
        """Run ``call`` on every Compute in parallel; return the failures (in Compute order)."""
        tasks = [asyncio.ensure_future(call(c)) for c in self._computes]
        if not tasks:
            return []
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]  # type: ignore[misc]

    async def ready(self, timeout: float | None = None) -> "Cluster":
        """Wait until every Compute is ready, in parallel (``timeout`` per Compute; None: their default).

        Every wait runs to its end, so all failures are reported together.
        """
        kwargs = {} if timeout is None else {"timeout": timeout}
        failures = await self._all(lambda c: c.ready(**kwargs))
        _raise_failures(failures, "become ready", len(self))
        return self

    def is_ready(self) -> bool:
        """Whether every Compute is ready now (fetches their status; sync)."""
        async def _check() -> bool:
            results = await asyncio.gather(*(c._fetch_is_ready() for c in self._computes))
            return all(results)

        return run_sync(_check())

    async def delete(self, grace_period_seconds: int = 30) -> None:
        """Delete every Compute in parallel; every one is attempted even when some fail."""
        failures = await self._all(lambda c: c.delete(grace_period_seconds))
        _raise_failures(failures, "be deleted", len(self))

    async def __aenter__(self) -> "Cluster":
        try:
            return await self.ready()
        except BaseException as exc:
            try:
                await _shielded(self.delete())
            except Exception as cleanup:
                logger.warning("Deleting the Computes of %r after a failed ready() also failed: %s", self, cleanup)
            raise exc

    async def __aexit__(self, *exc_info: Any) -> None:
        await _shielded(self.delete())
