"""Run the async core from sync code: the one bridge every sync entry point uses.

``run_sync(coro)`` runs a coroutine to completion:

- with no running event loop (a plain script), on a fresh loop, closing the
  backend's per-loop resources (HTTP sessions) before that loop ends;
- inside a running loop (a Jupyter kernel, a magic, a widget button), on that
  same loop through ``nest_asyncio``, never on a second loop in a thread, so
  the Compute's background tasks and connections stay on the kernel's loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Coroutine functions called at the end of every loop that :func:`run_sync`
#: creates, to release what is bound to that loop (the client registers the
#: backend's ``close`` here).
_loop_closers: list[Callable[[], Awaitable[Any]]] = []


def register_loop_closer(closer: Callable[[], Awaitable[Any]]) -> None:
    """Have ``closer()`` awaited at the end of each loop that :func:`run_sync` creates."""
    if closer not in _loop_closers:
        _loop_closers.append(closer)


async def _close_loop_resources() -> None:
    for closer in list(_loop_closers):
        try:
            await closer()
        except Exception:  # cleanup must not hide the caller's result
            logger.warning("Closing per-loop resources with %r failed", closer, exc_info=True)


def run_fresh(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new event loop of this thread and close that loop (like ``asyncio.run``).

    Unlike ``asyncio.run`` this stays right after ``nest_asyncio`` patched asyncio
    in this process (it replaces ``asyncio.run`` with a version that reuses the
    thread's loop and never closes it), so threads may call it in a notebook kernel too.
    """
    with asyncio.Runner() as runner:
        return runner.run(coro)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code and return its result (or raise its error)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None

    if loop is None:
        async def _main() -> T:
            try:
                return await coro
            finally:
                await _close_loop_resources()

        return run_fresh(_main())

    import nest_asyncio  # named in the design: re-entrant run_until_complete on the running loop

    if not getattr(loop, "_nest_patched", False):
        nest_asyncio.apply(loop)
    # The iteration of the loop that is running us may still be asyncio's own ``_run_once``
    # (the loop was patched during it): that frame counted its ready callbacks before calling
    # us and pops that many afterwards. The nested run below may run them first, so we top the
    # queue back up with no-ops; otherwise the outer frame fails with "pop from an empty deque".
    ready = getattr(loop, "_ready", None)
    before = len(ready) if ready is not None else 0
    try:
        return loop.run_until_complete(coro)
    finally:
        if ready is not None:
            for _ in range(before - len(ready)):
                loop.call_soon(_noop)


def _noop() -> None:
    """Placeholder callback (see :func:`run_sync`)."""
