"""Shared pytest configuration.

Fixtures live in ``tests/plugins/*.py``, one module per area (transport,
emulator, local backend, notebook, ...); every module there is loaded as a
plugin, so adding fixtures never means editing this file.
"""

from __future__ import annotations

import pathlib

pytest_plugins = sorted(
    f"tests.plugins.{path.stem}"
    for path in (pathlib.Path(__file__).parent / "plugins").glob("*.py")
    if path.stem != "__init__"
)
