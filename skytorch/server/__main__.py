"""``python -m skytorch.server``: run the SkyTorch tensor server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from skytorch.server import TensorServer, parse_settings, serve

logger = logging.getLogger("skytorch.server")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and environment, serve, exit 0 after a clean drain (1 on a startup error)."""
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        TensorServer(settings)  # fail fast on a bad handler or device, before binding
    except (ValueError, RuntimeError) as exc:
        logger.error("cannot start: %s", exc)
        return 1
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", settings.host or "0.0.0.0", settings.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
