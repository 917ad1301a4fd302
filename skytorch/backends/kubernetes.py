"""The Kubernetes backend: Computes as custom resources, through ``kubernetes_asyncio`` only.

- :meth:`KubernetesBackend.apply` is a server-side apply (PATCH,
  ``application/apply-patch+yaml``, ``fieldManager=skytorch-python-client``,
  ``force=true``), one request whether it creates or updates.
- :meth:`KubernetesBackend.watch` reads the Compute (a list narrowed by
  ``fieldSelector=metadata.name=<name>``, which also answers when it does not
  exist yet) and watches from that resourceVersion; an expired version
  (``410 Gone``) or a dropped connection is resumed from a fresh read, and the
  caller sees each state once. A 429/502/503/504 (the API asking to come back
  later) is ridden out with backoff; any other error status surfaces at once.
- :meth:`KubernetesBackend.events` lists and then watches core v1 Events whose
  ``involvedObject`` is the Compute, never yielding the same occurrence twice.
- API errors become :class:`skytorch.errors.KubernetesApiError` naming the
  Compute (403 says which RBAC verb and resource were refused).

Each event loop gets its own ``ApiClient`` (an aiohttp session is bound to its
loop); :meth:`KubernetesBackend.close` closes the running loop's one.

:func:`resolve_kubernetes` finds the configuration: an explicit one, else
kubeconfig, else the in-cluster service account, else ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import threading
from types import SimpleNamespace
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping, NamedTuple, TypeVar

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config import incluster_config
from kubernetes_asyncio.config import kube_config

from skytorch.backends.base import Backend
from skytorch.errors import BackendError, KubernetesApiError
from skytorch.kube import read_json, status_body
from skytorch.resources import (
    API_VERSION,
    CLIENT_FIELD_MANAGER,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ComputeResource,
    service_hostname,
    validate_name,
)

logger = logging.getLogger(__name__)

#: Where a pod's service account credentials live (overridable for tests).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

APPLY_PATCH = "application/apply-patch+yaml"

#: Seconds the API server keeps one watch request open before the backend renews it.
DEFAULT_WATCH_TIMEOUT = 290

_RESOURCE = f"{PLURAL}.{GROUP}"
#: Statuses a stream rides out with backoff (the API asks to come back later); others surface at once.
_TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): read afresh."""


class _Wording(NamedTuple):
    """How the logs of one list-then-watch stream name what it lists and watches."""

    listing: str  # "<listing> <namespace/name> got HTTP 503; retrying ..."
    watch: str  # "<watch> <namespace/name> dropped ...; resuming ..."
    afresh: str  # what it does after a 410 Gone


_COMPUTE_WORDING = _Wording("Reading Compute", "Watch of Compute", "reading it afresh")
_EVENTS_WORDING = _Wording("Listing the Events of Compute", "Event watch of Compute", "listing afresh")
_T = TypeVar("_T")


class KubernetesBackend(Backend):
    """Computes as ``compute.skytorch.dev/v1alpha1`` custom resources in one namespace.

    ``configuration`` is a ``kubernetes_asyncio.client.Configuration``;
    ``watch_timeout`` the seconds one watch request stays open on the server
    before it is renewed (from the last resourceVersion, without a re-read);
    ``request_timeout`` the seconds any other request may take.
    """

    kind = "kubernetes"

    def __init__(self, configuration: k8s.Configuration, namespace: str = "default", *,
                 watch_timeout: int = DEFAULT_WATCH_TIMEOUT, request_timeout: float = 60.0) -> None:
        self.configuration = configuration
        self.namespace = namespace
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self._clients: dict[asyncio.AbstractEventLoop, k8s.ApiClient] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KubernetesBackend(host={self.configuration.host!r}, namespace={self.namespace!r})"

    # ------------------------------------------------------------ clients

    def _api_client(self) -> k8s.ApiClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                # Its loop is gone, so its session cannot be closed any more; just forget it.
                logger.debug("dropping the Kubernetes API client of a closed event loop")
                self._clients.pop(old)
            api = self._clients.get(loop)
            if api is None:
                api = k8s.ApiClient(self.configuration)
                self._clients[loop] = api
            return api

    def _objects(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self._api_client())

    async def close(self) -> None:
        """Close the ``ApiClient`` (and its HTTP session) of the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            api = self._clients.pop(loop, None)
        if api is not None:
            await api.close()

    # ------------------------------------------------------------ errors

    def _who(self, name: str | None) -> str:
        return f"{self.namespace}/{name}" if name else self.namespace

    def _error(self, exc: BaseException, verb: str, name: str | None, *, resource: str = _RESOURCE) -> KubernetesApiError:
        """A :class:`KubernetesApiError` naming the Compute for an ``ApiException`` or a connection failure."""
        what = f'Compute "{self._who(name)}"' if name else f'Computes in namespace "{self.namespace}"'
        if isinstance(exc, TimeoutError):
            return KubernetesApiError(
                f"Cannot {verb} {what}: the Kubernetes API at {self.configuration.host} did not answer within "
                f"{self.request_timeout:g}s (TimeoutError). Check the cluster's health and your network.",
                compute=self._who(name))
        if not isinstance(exc, ApiException):
            return KubernetesApiError(
                f"Cannot {verb} {what}: the Kubernetes API at {self.configuration.host} could not be reached "
                f"({type(exc).__name__}: {exc}). Check the cluster address and your network.",
                compute=self._who(name))
        status = exc.status
        body = status_body(exc)
        if body is None:  # not JSON: show what the server sent
            reason, message = exc.reason, str(exc.body or "")
        else:
            reason, message = body.get("reason") or exc.reason, body.get("message") or ""
        api_says = f": {message}" if message else ""
        if status == 403:
            text = (f"Forbidden (RBAC): the Kubernetes API refused to {verb} {what}{api_says}. "
                    f'Grant the "{verb}" verb on "{resource}" in namespace "{self.namespace}" to the identity of '
                    "your kubeconfig or service account (a Role and RoleBinding).")
        elif status == 401:
            text = (f"Unauthorized: the Kubernetes API rejected the credentials used to {verb} {what}{api_says}. "
                    "Refresh your kubeconfig's credentials.")
        elif status == 422:
            text = f"The Kubernetes API rejected {what} as invalid{api_says}"
        elif status == 409:
            text = f"Conflict while trying to {verb} {what}{api_says}"
        elif status == 404:
            text = (f"Not found while trying to {verb} {what}{api_says}. Is the Compute CRD ({_RESOURCE}) "
                    "installed in this cluster?")
        elif status is not None and status >= 500:
            text = (f"The Kubernetes API failed to {verb} {what} (HTTP {status} {reason}){api_says}. "
                    "This is a server-side error; try again later.")
        else:
            text = f"The Kubernetes API answered HTTP {status} {reason} to {verb} {what}{api_says}"
        return KubernetesApiError(text, compute=self._who(name), status=status, reason=reason)

    # ------------------------------------------------------------ Backend

    async def apply(self, manifest: Mapping[str, Any]) -> ComputeResource:
        """Server-side apply of a full Compute body; one PATCH that creates or updates it."""
        body = json.loads(json.dumps(dict(manifest)))  # a plain, JSON-clean copy
        body.setdefault("apiVersion", API_VERSION)
        body.setdefault("kind", KIND)
        metadata = body.setdefault("metadata", {})
        name = validate_name(metadata.get("name"))
        namespace = metadata.setdefault("namespace", self.namespace)
        if namespace != self.namespace:
            raise BackendError(f'Compute "{name}" names namespace "{namespace}", but this backend works in '
                               f'namespace "{self.namespace}"')
        try:
            response = await self._objects().patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, body, field_manager=CLIENT_FIELD_MANAGER, force=True,
                _content_type=APPLY_PATCH, _preload_content=False, _request_timeout=self._timeout())
            data = await read_json(response)
        except (ApiException, aiohttp.ClientError, OSError) as exc:
            raise self._error(exc, "patch", name) from exc
        return ComputeResource.from_dict(data)

    async def get(self, name: str) -> ComputeResource | None:
        """The Compute as stored, or ``None``."""
        try:
            data = await self._objects().get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                                      _request_timeout=self._timeout())
        except (ApiException, aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return None
            raise self._error(exc, "get", name) from exc
        return ComputeResource.from_dict(data)

    async def list(self, label_selector: str | None = None) -> list[ComputeResource]:
        """Every Compute of the namespace (optionally filtered by a label selector), sorted by name."""
        kwargs = {"label_selector": label_selector} if label_selector else {}
        try:
            data = await self._objects().list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                                       _request_timeout=self._timeout(), **kwargs)
        except (ApiException, aiohttp.ClientError, OSError) as exc:
            raise self._error(exc, "list", None) from exc
        items = [ComputeResource.from_dict(item) for item in data.get("items") or []]
        return sorted(items, key=lambda r: r.metadata.name)

    async def delete(self, name: str, grace_period_seconds: int = 30) -> bool:
        """DELETE with that grace period; ``False`` when there was no such Compute."""
        options = k8s.V1DeleteOptions(grace_period_seconds=grace_period_seconds, propagation_policy="Background")
        try:
            await self._objects().delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, grace_period_seconds=grace_period_seconds, body=options,
                _request_timeout=self._timeout())
        except (ApiException, aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return False
            raise self._error(exc, "delete", name) from exc
        return True

    def endpoint(self, name: str, port: int) -> tuple[str, int]:
        """``<name>.<namespace>.svc.cluster.local`` (the operator's Service) and ``port``."""
        return service_hostname(name, self.namespace), port

    # ------------------------------------------------------------ streams

    async def _stream(self, response: aiohttp.ClientResponse, verb_name: str | None,
                      resource: str = _RESOURCE) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Decode one watch response into ``(type, raw object)``; ERROR 410 raises :class:`_Expired`."""
        try:
            if response.status != 200:
                await read_json(response)  # raises the ApiException
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired(obj.get("message"))
                    exc = ApiException(status=obj.get("code"), reason=obj.get("reason"))
                    exc.body = json.dumps(obj)
                    raise self._error(exc, "watch", verb_name, resource=resource)
                yield etype, obj
        finally:
            response.release()

    def _timeout(self) -> aiohttp.ClientTimeout:
        """Time limit of one plain (non-watch) request."""
        return aiohttp.ClientTimeout(total=self.request_timeout)

    def _watch_timeouts(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(sock_connect=30, sock_read=self.watch_timeout + 30)

    async def _list_then_watch(
            self, name: str, *, list_call: Callable[[], Awaitable[dict[str, Any]]],
            watch_call: Callable[[str | None], Awaitable[aiohttp.ClientResponse]],
            on_list: Callable[[dict[str, Any]], Iterator[_T]], on_event: Callable[[str, dict[str, Any]], Iterator[_T]],
            list_verb: str, resource: str, wording: _Wording) -> AsyncIterator[_T]:
        """List, then watch from the list's resourceVersion; yield what ``on_list``/``on_event`` make of it.

        ``list_call()`` returns the list as a dict; ``watch_call(rv)`` opens a watch
        response from ``rv``. ``on_list(list)`` and ``on_event(type, raw object)``
        are generators that decide what the caller sees (and so that nothing is
        seen twice). The watch is renewed from the last resourceVersion when the
        server ends it; an expired version (410 Gone) is listed afresh; a transient
        status (:data:`_TRANSIENT_STATUS`) or a dropped connection is ridden out
        with exponential backoff, which any event received (a BOOKMARK too) resets;
        any other API error raises :meth:`_error` (``list_verb`` for the list,
        ``watch`` for the watch, on ``resource``). ``on_event`` runs inside that
        handling (a ``ValueError`` there drops the watch and resumes it); ``on_list``
        does not.
        """
        backoff = _BACKOFF_FIRST
        while True:
            try:
                data = await list_call()
            except ApiException as exc:
                if exc.status not in _TRANSIENT_STATUS:
                    raise self._error(exc, list_verb, name, resource=resource) from exc
                logger.warning(f"{wording.listing} %s got HTTP %s; retrying in %.1fs",
                               self._who(name), exc.status, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                logger.warning(f"{wording.listing} %s failed (%s); retrying in %.1fs", self._who(name), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            for item in on_list(data):
                yield item
            rv = (data.get("metadata") or {}).get("resourceVersion")
            # Watch from rv until it expires; renew quietly when the server ends a watch.
            while True:
                try:
                    response = await watch_call(rv)
                    async with contextlib.aclosing(self._stream(response, name, resource=resource)) as stream:
                        async for etype, raw in stream:
                            rv = (raw.get("metadata") or {}).get("resourceVersion") or rv
                            for item in on_event(etype, raw):
                                yield item
                            backoff = _BACKOFF_FIRST
                except _Expired:
                    logger.debug(f"{wording.watch} %s expired (410 Gone); {wording.afresh}", self._who(name))
                    break
                except ApiException as exc:
                    if exc.status == 410:
                        break
                    if exc.status not in _TRANSIENT_STATUS:
                        raise self._error(exc, "watch", name, resource=resource) from exc
                    logger.warning(f"{wording.watch} %s got HTTP %s; retrying in %.1fs",
                                   self._who(name), exc.status, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
                    logger.info(f"{wording.watch} %s dropped (%s: %s); resuming in %.1fs",
                                self._who(name), type(exc).__name__, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)

    def watch(self, name: str) -> AsyncIterator[ComputeResource | None]:
        """Yield the Compute now (``None`` if absent), then each change; resumes after 410 and dropped connections."""
        last: str | None = "unset"  # resourceVersion of what the caller saw last ("" for None)
        selector = f"metadata.name={name}"

        def list_call() -> Awaitable[dict[str, Any]]:
            return self._objects().list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, field_selector=selector, _request_timeout=self._timeout())

        def watch_call(rv: str | None) -> Awaitable[aiohttp.ClientResponse]:
            return self._objects().list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, field_selector=selector, watch=True,
                resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                _preload_content=False, _request_timeout=self._watch_timeouts())

        def on_list(data: dict[str, Any]) -> Iterator[ComputeResource | None]:
            nonlocal last
            items = data.get("items") or []
            current = ComputeResource.from_dict(items[0]) if items else None
            seen = current.metadata.resource_version if current else ""
            if seen != last:
                last = seen
                yield current

        def on_event(etype: str, obj: dict[str, Any]) -> Iterator[ComputeResource | None]:
            nonlocal last
            if etype == "DELETED":
                if last != "":
                    last = ""
                    yield None
            elif etype in ("ADDED", "MODIFIED"):
                resource = ComputeResource.from_dict(obj)
                if resource.metadata.resource_version != last:
                    last = resource.metadata.resource_version
                    yield resource

        return self._list_then_watch(name, list_call=list_call, watch_call=watch_call, on_list=on_list,
                                     on_event=on_event, list_verb="get", resource=_RESOURCE, wording=_COMPUTE_WORDING)

    def events(self, name: str) -> AsyncIterator[Any]:
        """Yield each Event about this Compute as a ``CoreV1Event``, existing ones first, none twice."""
        selector = f"involvedObject.kind={KIND},involvedObject.name={name},involvedObject.namespace={self.namespace}"
        seen: dict[str, Any] = {}  # uid -> count (an Event object repeated later bumps its count)

        def fresh(raw: dict[str, Any]) -> bool:
            uid = (raw.get("metadata") or {}).get("uid") or (raw.get("metadata") or {}).get("name")
            count = raw.get("count") or (raw.get("series") or {}).get("count") or 1
            if seen.get(uid) == count:
                return False
            seen[uid] = count
            return True

        def decode(raw: dict[str, Any]) -> Any:
            return self._api_client().deserialize(SimpleNamespace(data=json.dumps(raw)), "CoreV1Event")

        def order(raw: dict[str, Any]) -> tuple[str, int]:
            stamp = raw.get("lastTimestamp") or raw.get("eventTime") or raw.get("firstTimestamp") or \
                (raw.get("metadata") or {}).get("creationTimestamp") or ""
            try:
                rv = int((raw.get("metadata") or {}).get("resourceVersion") or 0)
            except ValueError:
                rv = 0
            return (str(stamp), rv)

        async def list_call() -> dict[str, Any]:
            response = await k8s.CoreV1Api(self._api_client()).list_namespaced_event(
                self.namespace, field_selector=selector, _preload_content=False, _request_timeout=self._timeout())
            return await read_json(response)

        def watch_call(rv: str | None) -> Awaitable[aiohttp.ClientResponse]:
            return k8s.CoreV1Api(self._api_client()).list_namespaced_event(
                self.namespace, field_selector=selector, watch=True, resource_version=rv,
                allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout, _preload_content=False,
                _request_timeout=self._watch_timeouts())

        def on_list(data: dict[str, Any]) -> Iterator[Any]:
            for raw in sorted(data.get("items") or [], key=order):
                if fresh(raw):
                    yield decode(raw)

        def on_event(etype: str, raw: dict[str, Any]) -> Iterator[Any]:
            if etype in ("ADDED", "MODIFIED") and fresh(raw):
                yield decode(raw)

        return self._list_then_watch(name, list_call=list_call, watch_call=watch_call, on_list=on_list,
                                     on_event=on_event, list_verb="list", resource="events", wording=_EVENTS_WORDING)


# ---------------------------------------------------------------- configuration

def _kubeconfig_paths() -> list[pathlib.Path]:
    raw = os.environ.get("KUBECONFIG")
    if not raw:  # unset or empty: kubectl's default
        candidates = [pathlib.Path.home() / ".kube" / "config"]
    else:
        candidates = [pathlib.Path(p).expanduser() for p in raw.split(kube_config.ENV_KUBECONFIG_PATH_SEPARATOR) if p]
    return [p for p in candidates if p.is_file()]


def _context_namespace(paths: list[pathlib.Path]) -> str | None:
    """The namespace of the current context of the merged kubeconfig files, if it sets one."""
    current: str | None = None
    contexts: dict[str, Any] = {}
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for ctx in doc.get("contexts") or []:
            contexts.setdefault(ctx.get("name"), ctx.get("context") or {})
        if current is None and doc.get("current-context"):
            current = doc["current-context"]
    return (contexts.get(current) or {}).get("namespace") if current else None


def _service_account_namespace() -> str | None:
    try:
        text = (pathlib.Path(SERVICE_ACCOUNT_DIR) / "namespace").read_text().strip()
    except OSError:
        return None
    return text or None


def _copy_sync_configuration(source: Any) -> k8s.Configuration:
    """A ``kubernetes_asyncio`` Configuration with the host, auth, TLS and proxy settings of a sync one."""
    target = k8s.Configuration()
    target.host = source.host
    api_key = dict(getattr(source, "api_key", None) or {})
    prefix = dict(getattr(source, "api_key_prefix", None) or {})
    # The sync client may keep the token under "authorization"; kubernetes_asyncio reads "BearerToken".
    if "authorization" in api_key and "BearerToken" not in api_key:
        api_key["BearerToken"] = api_key.pop("authorization")
        if "authorization" in prefix:
            prefix["BearerToken"] = prefix.pop("authorization")
    target.api_key = api_key
    target.api_key_prefix = prefix
    for attr in ("ssl_ca_cert", "cert_file", "key_file", "verify_ssl", "proxy", "username", "password",
                 "assert_hostname", "tls_server_name", "proxy_headers"):
        if hasattr(source, attr) and hasattr(target, attr):
            setattr(target, attr, getattr(source, attr))
    hook = getattr(source, "refresh_api_key_hook", None)
    if hook is not None:
        target.refresh_api_key_hook = hook
    return target


def as_async_configuration(client_config: Any) -> k8s.Configuration:
    """``client_config`` as a ``kubernetes_asyncio`` Configuration (a sync ``kubernetes`` one is copied)."""
    if isinstance(client_config, k8s.Configuration):
        return client_config
    if all(hasattr(client_config, attr) for attr in ("host", "api_key", "verify_ssl")):
        return _copy_sync_configuration(client_config)
    raise BackendError(f"client_config must be a kubernetes_asyncio.client.Configuration or a "
                       f"kubernetes.client.Configuration, got {type(client_config).__name__}")


async def resolve_kubernetes(client_config: Any = None, namespace: str | None = None) -> KubernetesBackend | None:
    """The Kubernetes backend for this process, or ``None`` when no Kubernetes configuration exists.

    Configuration: ``client_config`` if given; else kubeconfig (``KUBECONFIG``, else
    ``~/.kube/config``; its current context); else the in-cluster service account
    (``KUBERNETES_SERVICE_HOST`` and the token in :data:`SERVICE_ACCOUNT_DIR`).
    Namespace: ``namespace``; else the kubeconfig context's; else the service
    account's namespace file; else ``default``.
    """
    paths = _kubeconfig_paths()
    if client_config is not None:
        configuration = as_async_configuration(client_config)
        source = "the given client configuration"
    elif paths:
        configuration = k8s.Configuration()
        joined = kube_config.ENV_KUBECONFIG_PATH_SEPARATOR.join(str(p) for p in paths)
        try:
            await kube_config.load_kube_config(config_file=joined, client_configuration=configuration,
                                               persist_config=False)
        except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"The kubeconfig {joined} could not be loaded: {exc}") from exc
        source = f"kubeconfig {joined}"
    else:
        sa_dir = pathlib.Path(SERVICE_ACCOUNT_DIR)
        if not (os.environ.get(incluster_config.SERVICE_HOST_ENV_NAME) and (sa_dir / "token").is_file()):
            return None
        configuration = k8s.Configuration()
        try:
            incluster_config.load_incluster_config(client_configuration=configuration,
                                                   token_filename=str(sa_dir / "token"),
                                                   cert_filename=str(sa_dir / "ca.crt"))
        except ConfigException as exc:
            raise BackendError(f"The in-cluster service account in {sa_dir} could not be used: {exc}") from exc
        source = f"the in-cluster service account ({sa_dir})"
    ns = namespace or _context_namespace(paths) or _service_account_namespace() or "default"
    logger.info("Computes are Kubernetes resources at %s in namespace %s (from %s)", configuration.host, ns, source)
    return KubernetesBackend(configuration, ns)
