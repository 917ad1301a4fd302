"""Drive an emulator running in another process (``python -m tests.emulator``) through its ``/_emulator`` hooks."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


class EmulatorControl:
    """Test hooks of a remote emulator at ``url`` (``http://127.0.0.1:<port>``), all synchronous."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, hook: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/_emulator/{hook}", data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def requests(self) -> list[dict[str, Any]]:
        """The request log: dicts with method, path, query, content_type, body, user_agent, status."""
        return self._call("GET", "requests")

    def clear_requests(self) -> None:
        """Empty the request log."""
        self._call("DELETE", "requests")

    def compact(self) -> int:
        """Expire the watch history (older resourceVersions get 410 Gone); returns the current one."""
        return self._call("POST", "compact", {})["resourceVersion"]

    def drop_watches(self, abrupt: bool = True) -> int:
        """Cut every open watch; returns how many."""
        return self._call("POST", "drop-watches", {"abrupt": abrupt})["dropped"]

    def fail(self, method: str, path: str, status: int | None = 403, *, times: int | None = None,
             message: str | None = None, delay: float = 0.0, watch: bool | None = None) -> None:
        """Fail (or, with ``status=None`` and a ``delay``, slow down) matching requests; see :meth:`KubeEmulator.fail`."""
        self._call("POST", "failures", {"method": method, "path": path, "status": status, "times": times,
                                        "message": message, "delay": delay, "watch": watch})

    def clear_failures(self) -> None:
        """Remove every failure rule."""
        self._call("DELETE", "failures")

    def set_ready(self, name: str, namespace: str = "default") -> None:
        """Fake operator: Ready=True now."""
        self._call("POST", "operator/ready", {"name": name, "namespace": namespace})

    def fail_compute(self, name: str, namespace: str = "default", *, reason: str = "BackOff",
                     message: str = "Back-off restarting failed container") -> None:
        """Fake operator: fail the Compute (now, or when it is applied)."""
        self._call("POST", "operator/fail", {"name": name, "namespace": namespace, "reason": reason,
                                             "message": message})

    def heal(self, name: str, namespace: str = "default") -> None:
        """Fake operator: forget a failure; the Compute goes to ready again."""
        self._call("POST", "operator/heal", {"name": name, "namespace": namespace})
