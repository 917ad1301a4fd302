"""``kubernetes_asyncio`` helpers shared by the Kubernetes backend and the operator.

Both :mod:`skytorch.backends.kubernetes` and :mod:`skytorch.operator` import this
package, so it imports neither of them, nor ``skytorch.client``: only
``kubernetes_asyncio`` and the standard library.

- :func:`read_json` reads a raw (``_preload_content=False``) response and raises
  the ``ApiException`` that ``kubernetes_asyncio`` would have raised for a non-2xx.
- :func:`status_body` is the API's ``Status`` object carried by an ``ApiException``.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["read_json", "status_body"]


async def read_json(response: Any) -> Any:
    """The JSON body of a response read with ``_preload_content=False`` (``None`` if empty).

    The response is released whatever happens; a status outside 2xx raises
    ``ApiException`` with the body as its ``body``.
    """
    try:
        data = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        exc = ApiException(status=response.status, reason=response.reason)
        exc.body = data.decode("utf-8", "replace")
        raise exc
    return json.loads(data) if data else None


def status_body(exc: ApiException) -> dict[str, Any] | None:
    """The Kubernetes ``Status`` object in an ``ApiException``'s body (its ``reason``, ``message``...).

    ``{}`` when there is no body or its JSON is not an object; ``None`` when the
    body is not JSON at all (a proxy's error page, say), so that a caller may
    show the raw body instead.
    """
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return None
    return body if isinstance(body, dict) else {}
