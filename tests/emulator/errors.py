"""API errors, answered with a ``Status`` body exactly as the real API server writes them."""

from __future__ import annotations

from typing import Any


class StatusError(Exception):
    """An API failure: HTTP ``code``, ``reason`` (``NotFound``, ``Conflict``, ...) and a message."""

    def __init__(self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The ``Status`` object of this error."""
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out
