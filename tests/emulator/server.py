"""The HTTP face of the emulator: Kubernetes API paths on aiohttp, a request log and failure injection.

:class:`KubeEmulator` serves the store over HTTP on loopback. It runs either on
a loop of its own in a background thread (:meth:`KubeEmulator.running`, what
the pytest fixtures use) or on the caller's loop (:meth:`start`/:meth:`stop`,
what ``python -m tests.emulator`` uses). Clients reach it through a real
kubeconfig written by :meth:`KubeEmulator.write_kubeconfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pathlib
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import yaml
from aiohttp import web

from tests.emulator.errors import StatusError
from tests.emulator.resources import ResourceType, api_resource_list
from tests.emulator.selectors import field_selector, label_selector
from tests.emulator.store import APPLY, Obj, Store

logger = logging.getLogger(__name__)

VERSION_INFO = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-skytorch-emulator", "gitCommit": "emulator",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64"}


def _truthy(value: str | None) -> bool:
    """A boolean query parameter as the API reads it (``true``, ``True``, ``1``)."""
    return (value or "").lower() in ("true", "1")


@dataclass
class RequestRecord:
    """One request the emulator answered."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: Any
    user_agent: str = ""
    status: int = 0

    @property
    def is_watch(self) -> bool:
        """Whether this was a watch request."""
        return _truthy(self.query.get("watch")) or "/watch/" in self.path


@dataclass
class FailureRule:
    """Answer requests matching ``method`` (``*``: any) and ``path`` (a regex searched in the path) with ``status``.

    ``times``: how many requests to fail (``None``: every one). ``hits`` counts the failed ones.
    ``delay``: seconds to stall first; with ``status=None`` the request then goes through (a slow API).
    """

    method: str
    path: re.Pattern[str]
    status: int | None
    times: int | None = None
    message: str | None = None
    hits: int = 0
    delay: float = 0.0
    #: ``True``: only watch requests; ``False``: only the others; ``None``: both.
    watch: bool | None = None

    def matches(self, method: str, path: str, is_watch: bool = False) -> bool:
        """Whether this rule fails that request now."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.watch is not None and self.watch != is_watch:
            return False
        return (self.method == "*" or self.method.upper() == method.upper()) and bool(self.path.search(path))


@dataclass
class _Target:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch: bool


_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class KubeEmulator:
    """A Kubernetes API server emulator on loopback, for the real ``kubernetes_asyncio`` client and kopf.

    ``token``: the bearer token clients must send (``None``: no authentication).
    ``history_limit``: how many changes watches can replay before ``410 Gone``.
    ``bookmark_interval``: seconds between BOOKMARK events on watches that allow them.
    """

    def __init__(self, *, token: str | None = "emulator-token", history_limit: int = 1000,
                 bookmark_interval: float = 1.0, strict_namespaces: bool = False) -> None:
        self.token = token
        self.store = Store(history_limit=history_limit, strict_namespaces=strict_namespaces)
        self.bookmark_interval = bookmark_interval
        self.requests: list[RequestRecord] = []
        self.failures: list[FailureRule] = []
        self.host = "127.0.0.1"
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()
        #: The fake operator playing against this emulator, if any (set by :class:`FakeOperator`).
        self.operator: Any = None

    # --------------------------------------------------------------- running

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (``0``: a free port) on the running loop."""
        self.loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        logger.info("Kubernetes API emulator listening on %s", self.url)

    async def stop(self) -> None:
        """Close every watch and stop listening."""
        self.store.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator["KubeEmulator"]:
        """Serve from a background thread with its own event loop for the duration of the block."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start(host, port))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=main, name="kube-emulator", daemon=True)
        thread.start()
        started.wait(30)
        if failure:
            thread.join(5)
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)

    def call(self, fn: Any, *args: Any, timeout: float = 30) -> Any:
        """Run ``fn(*args)`` (a coroutine function or plain function) on the emulator's loop and return its result."""
        assert self.loop is not None, "the emulator is not running"

        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    # --------------------------------------------------------------- kubeconfig

    def kubeconfig(self, namespace: str = "default", *, token: bool = True, context: str = "emulator") -> dict[str, Any]:
        """A kubeconfig document whose current context points at this emulator with ``namespace``."""
        user: dict[str, Any] = {}
        if token and self.token:
            user["token"] = self.token
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }

    def write_kubeconfig(self, path: str | pathlib.Path, namespace: str = "default", *, token: bool = True) -> pathlib.Path:
        """Write a kubeconfig file that ``kubernetes_asyncio.config.load_kube_config`` loads unmodified."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace, token=token), sort_keys=False))
        return path

    # --------------------------------------------------------------- test hooks

    def fail(self, method: str, path: str, status: int | None = 403, *, times: int | None = None,
             message: str | None = None, delay: float = 0.0, watch: bool | None = None) -> FailureRule:
        """Answer matching requests with ``status`` (403: an RBAC Forbidden Status) ``times`` times, or always.

        ``delay`` stalls each matching request that long first; ``status=None`` then lets it through.
        ``watch``: ``True`` matches only watch requests, ``False`` only the others (``None``: both).
        """
        rule = FailureRule(method, re.compile(path), status, times, message, delay=delay, watch=watch)
        with self._lock:
            self.failures.append(rule)
        return rule

    def clear_failures(self) -> None:
        """Remove every failure rule."""
        with self._lock:
            self.failures.clear()

    def requests_made(self, method: str | None = None, path: str | None = None, *,
                      watch: bool | None = None) -> list[RequestRecord]:
        """Logged requests, filtered by method, path regex and whether they were watches."""
        with self._lock:
            records = list(self.requests)
        return [r for r in records
                if (method is None or r.method == method.upper())
                and (path is None or re.search(path, r.path))
                and (watch is None or r.is_watch == watch)]

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self.requests.clear()

    def compact(self) -> int:
        """Forget the change history: watches from older resourceVersions get ``410 Gone``. Returns the current one."""
        return self.store.compact()

    def drop_watches(self, *, abrupt: bool = True) -> int:
        """End every open watch; ``abrupt`` cuts the TCP connection mid-stream. Returns how many."""
        return self.store.drop_watches(abrupt=abrupt)

    def open_watches(self) -> int:
        """How many watch connections are open now (the fake operator's in-process watch is not counted)."""
        with self.store.lock:
            return sum(1 for w in self.store.watchers if not w.internal)

    # --------------------------------------------------------------- object helpers

    def _type(self, api_version: str, kind: str) -> ResourceType:
        rtype = self.store.type_of(api_version, kind)
        if rtype is None:
            raise KeyError(f"the emulator serves no {kind} in {api_version}")
        return rtype

    def create(self, body: Obj, *, manager: str = "test") -> Obj:
        """Create an object directly in the store (any thread); returns it as stored."""
        rtype = self._type(body["apiVersion"], body["kind"])
        return self.store.create(rtype, body.get("metadata", {}).get("namespace"), body, manager=manager)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object, or ``None``."""
        return self.store.find(self._type(api_version, kind), namespace, name)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every stored object of a kind (in a namespace)."""
        return self.store.list(self._type(api_version, kind), namespace)[0]

    def patch(self, api_version: str, kind: str, name: str, patch: Obj, namespace: str | None = None, *,
              subresource: str | None = None, manager: str = "test", content_type: str = "application/merge-patch+json",
              force: bool = False) -> Obj:
        """Patch an object directly in the store (merge patch unless told otherwise)."""
        return self.store.patch(self._type(api_version, kind), namespace, name, patch, content_type,
                                manager=manager, force=force, subresource=subresource)[0]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, *,
               grace_period_seconds: int | None = None) -> Obj:
        """Delete an object directly in the store."""
        return self.store.delete(self._type(api_version, kind), namespace, name,
                                 grace_period_seconds=grace_period_seconds)[0]

    def emit_event(self, involved: Obj, reason: str, message: str, *, type: str = "Normal",
                   component: str = "skytorch-operator") -> Obj:
        """Post a core v1 Event about ``involved`` (an object as stored), as an operator would."""
        meta = involved["metadata"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                               "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": type,
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "action": reason,
        }
        return self.create(body, manager=component)

    # --------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            try:
                return await self._control(request)
            except StatusError as exc:
                return web.json_response(exc.body(), status=exc.code)
        query = dict(request.query)
        record = RequestRecord(request.method, request.path, query, request.headers.get("Content-Type"), None,
                               request.headers.get("User-Agent", ""))
        with self._lock:
            self.requests.append(record)
        try:
            if request.body_exists:
                raw = await request.read()
                if raw:
                    try:
                        ctype = (record.content_type or "").split(";")[0].strip()
                        record.body = yaml.safe_load(raw) if ctype == APPLY else json.loads(raw)
                    except (ValueError, yaml.YAMLError) as exc:
                        raise StatusError(400, "BadRequest", f"the body of the request could not be decoded: {exc}") from None
            self._authenticate(request)
            await self._inject_failure(request, record.is_watch)
            response = await self._route(request, record)
        except StatusError as exc:
            response = web.json_response(exc.body(), status=exc.code)
        record.status = response.status
        return response

    async def _control(self, request: web.Request) -> web.Response:
        """Test hooks over HTTP (``/_emulator/...``) for tests whose emulator runs in another process.

        Not logged, not subject to failure rules. See :class:`tests.emulator.control.EmulatorControl`.
        """
        what = request.path[len("/_emulator/"):].strip("/")
        body = await request.json() if request.body_exists else {}
        if what == "requests" and request.method == "GET":
            with self._lock:
                records = [dataclasses.asdict(r) for r in self.requests]
            return web.json_response(records)
        if what == "requests" and request.method == "DELETE":
            self.clear_requests()
            return web.json_response({})
        if what == "compact" and request.method == "POST":
            return web.json_response({"resourceVersion": self.compact()})
        if what == "drop-watches" and request.method == "POST":
            return web.json_response({"dropped": self.drop_watches(abrupt=bool(body.get("abrupt", True)))})
        if what == "failures" and request.method == "POST":
            status = body.get("status", 403)
            self.fail(body.get("method", "*"), body["path"], None if status is None else int(status),
                      times=body.get("times"), message=body.get("message"), delay=float(body.get("delay") or 0),
                      watch=body.get("watch"))
            return web.json_response({})
        if what == "failures" and request.method == "DELETE":
            self.clear_failures()
            return web.json_response({})
        if what.startswith("operator/") and request.method == "POST":
            operator = self.operator
            if operator is None:
                raise StatusError(409, "Conflict", "this emulator runs no fake operator (start it with --fake-operator)")
            key = (body.get("namespace") or "default", body["name"])
            action = what.split("/", 1)[1]
            if action == "ready":
                operator._ready(key)
            elif action == "fail":
                operator._fail(key, body.get("reason", "BackOff"), body.get("message", "Back-off restarting failed container"),
                               body.get("conditionReason", "CrashLoopBackOff"))
            elif action == "heal":
                operator._heal(key)
            else:
                raise StatusError(404, "NotFound", f"no operator action {action!r}")
            return web.json_response({})
        raise StatusError(404, "NotFound", f"no emulator hook {request.method} {request.path}")

    def _authenticate(self, request: web.Request) -> None:
        if self.token is None or request.path in ("/healthz", "/readyz", "/livez"):
            return
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise StatusError(401, "Unauthorized", "Unauthorized")

    async def _inject_failure(self, request: web.Request, is_watch: bool) -> None:
        with self._lock:
            rule = next((r for r in self.failures if r.matches(request.method, request.path, is_watch)), None)
            if rule is None:
                return
            rule.hits += 1
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.status is None:
            return
        if rule.status == 403:
            message = rule.message or self._forbidden_message(request)
            raise StatusError(403, "Forbidden", message, details=self._details(request))
        reasons = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests", 404: "NotFound",
                   409: "Conflict", 401: "Unauthorized", 410: "Expired", 504: "Timeout"}
        message = rule.message or (f"Internal error occurred: injected failure for {request.method} {request.path}"
                                   if rule.status >= 500 else f"injected {rule.status} for {request.method} {request.path}")
        raise StatusError(rule.status, reasons.get(rule.status, "Unknown"), message, details=self._details(request))

    def _details(self, request: web.Request) -> dict[str, Any]:
        try:
            target = self._target(request.path, dict(request.query))
        except StatusError:
            return {}
        details = {"group": target.rtype.group, "kind": target.rtype.plural}
        if target.name:
            details["name"] = target.name
        return details

    def _forbidden_message(self, request: web.Request) -> str:
        verb = _VERBS.get(request.method, request.method.lower())
        try:
            target = self._target(request.path, dict(request.query))
        except StatusError:
            return f'forbidden: User "system:serviceaccount:default:default" cannot {verb} path "{request.path}"'
        if request.method == "GET" and target.name is None:
            verb = "watch" if target.watch or _truthy(request.query.get("watch")) else "list"
        resource = target.rtype.plural + (f"/{target.subresource}" if target.subresource else "")
        what = f'{target.rtype.resource_name} "{target.name}"' if target.name else target.rtype.resource_name
        scope = f' in the namespace "{target.namespace}"' if target.namespace else " at the cluster scope"
        return (f'{what} is forbidden: User "system:serviceaccount:default:default" cannot {verb} resource '
                f'"{resource}" in API group "{target.rtype.group}"{scope}')

    def _target(self, path: str, query: dict[str, str]) -> _Target:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        watch = False
        if rest[:1] == ["watch"]:
            watch, rest = True, rest[1:]
        namespace = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        rtype = self.store.find_type(group, version, rest[0])
        if rtype is None:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (namespace is not None and not rtype.namespaced) or (rtype.namespaced and name and namespace is None):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if sub is not None and not (sub == "status" and rtype.status_subresource):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return _Target(rtype, namespace, name, sub, watch)

    async def _route(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            discovery = self._discovery(parts)
            if discovery is not None:
                return discovery
        target = self._target(request.path, record.query)
        query = record.query
        if query.get("dryRun"):
            raise StatusError(400, "BadRequest", "dryRun is not supported by the SkyTorch API emulator")
        store, rtype = self.store, target.rtype
        if target.name is None:
            if request.method == "GET":
                predicate = self._predicate(rtype, query)
                if target.watch or _truthy(query.get("watch")):
                    return await self._watch(request, target, predicate, query)
                return self._list(target, predicate, query)
            if request.method == "POST":
                obj = store.create(rtype, target.namespace, record.body, manager=self._manager(request, query))
                return web.json_response(obj, status=201)
            if request.method == "DELETE":
                predicate = self._predicate(rtype, query)
                items, _ = store.list(rtype, target.namespace, predicate)
                for item in items:
                    with contextlib.suppress(StatusError):
                        store.delete(rtype, item["metadata"].get("namespace"), item["metadata"]["name"])
                return web.json_response({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                                          "metadata": {"resourceVersion": str(store.rv)}, "items": items})
            raise StatusError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource")
        if request.method == "GET":
            obj = store.get(rtype, target.namespace, target.name)
            return web.json_response(obj)
        if request.method == "PUT":
            obj = store.replace(rtype, target.namespace, target.name, record.body, manager=self._manager(request, query),
                                subresource=target.subresource)
            return web.json_response(obj)
        if request.method == "PATCH":
            ctype = (record.content_type or "").split(";")[0].strip()
            force = _truthy(query.get("force"))
            if force and ctype != APPLY:
                raise StatusError(400, "BadRequest", "force is only allowed for apply patches")
            obj, created = store.patch(rtype, target.namespace, target.name, record.body, ctype,
                                       manager=query.get("fieldManager") or (None if ctype == APPLY else self._manager(request, query)),
                                       force=force, subresource=target.subresource)
            return web.json_response(obj, status=201 if created else 200)
        if request.method == "DELETE":
            options = record.body if isinstance(record.body, dict) else {}
            grace = query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
            policy = query.get("propagationPolicy", options.get("propagationPolicy"))
            if policy is None and options.get("orphanDependents") is True:
                policy = "Orphan"
            obj, gone = store.delete(rtype, target.namespace, target.name,
                                     grace_period_seconds=int(grace) if grace is not None else None,
                                     propagation_policy=policy, preconditions=options.get("preconditions"))
            if gone and not rtype.group and rtype.kind not in ("Pod",):
                return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                          "details": {"name": target.name, "kind": rtype.plural,
                                                      "uid": obj["metadata"].get("uid")}})
            return web.json_response(obj, status=200 if gone else 202 if False else 200)
        raise StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    @staticmethod
    def _manager(request: web.Request, query: dict[str, str]) -> str:
        agent = request.headers.get("User-Agent", "unknown")
        return query.get("fieldManager") or agent.split("/")[0].split(" ")[0] or "unknown"

    def _predicate(self, rtype: ResourceType, query: dict[str, str]) -> Any:
        labels = label_selector(query.get("labelSelector"))
        fields = field_selector(query.get("fieldSelector"), rtype.selectable_fields, rtype.kind)
        return lambda obj: labels(obj) and fields(obj)

    def _list(self, target: _Target, predicate: Any, query: dict[str, str]) -> web.Response:
        items, rv = self.store.list(target.rtype, target.namespace, predicate)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        offset = 0
        if query.get("continue"):
            try:
                offset = int(query["continue"])
            except ValueError:
                raise StatusError(400, "BadRequest", "invalid continue token") from None
        limit = int(query.get("limit") or 0)
        if limit > 0 or offset:
            page = items[offset:offset + limit] if limit > 0 else items[offset:]
            if limit > 0 and offset + limit < len(items):
                meta["continue"] = str(offset + limit)
                meta["remainingItemCount"] = len(items) - offset - limit
            items = page
        for item in items:
            item.setdefault("kind", target.rtype.kind)
        return web.json_response({"kind": f"{target.rtype.kind}List", "apiVersion": target.rtype.api_version,
                                  "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, target: _Target, predicate: Any,
                     query: dict[str, str]) -> web.StreamResponse:
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        bookmarks = _truthy(query.get("allowWatchBookmarks"))
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        gone: StatusError | None = None
        try:
            watcher, first, _ = self.store.subscribe(target.rtype, target.namespace, predicate,
                                                      query.get("resourceVersion"), asyncio.get_running_loop())
        except StatusError as exc:
            if exc.code != 410:
                raise
            gone = exc
        await response.prepare(request)

        async def send(etype: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

        if gone is not None:
            await send("ERROR", gone.body())
            await response.write_eof()
            return response
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            for etype, obj in first:
                await send(etype, obj)
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                item = await watcher.next(wait)
                if item is None:
                    rv = self.store.bookmark_rv(watcher) if bookmarks else None
                    if rv is not None:
                        await send("BOOKMARK", {"kind": target.rtype.kind, "apiVersion": target.rtype.api_version,
                                                "metadata": {"resourceVersion": str(rv)}})
                    continue
                etype, obj = item
                if etype == "drop":
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if etype == "closed":
                    break
                assert obj is not None
                obj["apiVersion"] = target.rtype.api_version
                await send(etype, obj)
        except ConnectionResetError:  # the client went away
            return response
        finally:
            self.store.unsubscribe(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _discovery(self, parts: list[str]) -> web.Response | None:
        types = list(self.store.types.values())
        if parts == ["version"]:
            return web.json_response(VERSION_INFO)
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        if parts == []:
            return web.json_response({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/version"]})
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]})
        if parts == ["api", "v1"]:
            return web.json_response(api_resource_list("v1", [t for t in types if not t.group]))
        groups: dict[str, list[str]] = {}
        for t in types:
            if t.group:
                versions = groups.setdefault(t.group, [])
                if t.version not in versions:
                    versions.append(t.version)

        def group_doc(name: str) -> dict[str, Any]:
            versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
            return {"name": name, "versions": versions, "preferredVersion": versions[0]}

        if parts == ["apis"]:
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1",
                                      "groups": [group_doc(g) for g in sorted(groups)]})
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **group_doc(parts[1])})
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], []):
            return web.json_response(api_resource_list(f"{parts[1]}/{parts[2]}",
                                                       [t for t in types if t.group == parts[1] and t.version == parts[2]]))
        return None
