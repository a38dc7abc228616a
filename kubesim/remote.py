"""A `Store` backed by a real API server: the part of kubesim.store.Store's contract the kubelet, the runtime
(volumes, env) and the event recorder use, over HTTPS with the `kubernetes` client's ApiClient (its TLS set-up
and connection pool), plus informers (list + watch with bookmarks, resume, relist on 410 Gone) that turn watch
events into `kubesim.store.Event`s for the listeners (Cache, Kubelets.on_event), as the in-process store does.

    store = RemoteStore.from_kubeconfig(path, informers=[Informed(PODS, field_selector="spec.nodeName=n1")])
    store.start()            # lists every informed resource, then watches it
    store.snapshot(PODS)     # answered from the informer, no request

Objects are plain dicts (the API's JSON). Errors are kubesim.errors.ApiError with the server's code, reason and
message, so callers written for the in-process store (404 -> create, 409 -> retry) work unchanged.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, urlencode

import urllib3

from . import errors
from .resources import ResourceType
from .store import ADDED, DELETED, MODIFIED, Event, copy_json

log = logging.getLogger("kubesim.remote")

MUTATE_ATTEMPTS = 3          # GET-fn-PUT rounds before a 409 goes to the caller
WATCH_TIMEOUT_SECONDS = 60   # the server ends each watch after this; the informer resumes from its last RV
RETRY_SECONDS = 0.5          # pause before a failed list/watch is tried again
REQUEST_TIMEOUT = 30.0

Listener = Callable[[Event], None]


@dataclass(frozen=True)
class Informed:
    """One informer: a resource type, optionally one namespace and a field selector (a kubelet's
    `spec.nodeName=<node>` for pods, as the real kubelet and the Node authorizer require)."""
    resource: ResourceType
    namespace: str | None = None
    field_selector: str | None = None

    def covers(self, rt: ResourceType, namespace: str | None) -> bool:
        """Whether this informer holds every object a read of (rt, namespace) could return."""
        return rt.key == self.resource.key and self.field_selector is None \
            and self.namespace in (None, namespace)


def _api_error(resp: urllib3.BaseHTTPResponse) -> errors.ApiError:
    """The server's Status as kubesim's ApiError."""
    try:
        status = json.loads(resp.data or b"{}")
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    return errors.ApiError(resp.status, status.get("reason") or "Unknown",
                           status.get("message") or (resp.data or b"").decode(errors="replace")[:500],
                           status.get("details"))


def path_of(rt: ResourceType, namespace: str | None = None, name: str | None = None,
            subresource: str | None = None) -> str:
    base = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    if rt.namespaced and namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{rt.plural}"
    if name:
        base += f"/{quote(name, safe='')}"
    if subresource:
        base += f"/{subresource}"
    return base


class _Informer:
    """List + watch of one `Informed`, keeping the objects by (namespace, name) and publishing Events."""

    def __init__(self, store: "RemoteStore", spec: Informed) -> None:
        self.store = store
        self.spec = spec
        self.rt = spec.resource
        self.objects: dict[tuple[str, str], dict] = {}
        self.resource_version = ""
        self.synced = threading.Event()
        self.relists = 0              # how many times the informer listed (1 + one per 410 / failure)
        self.lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"kubesim-informer-{self.rt.plural}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        resp = self._response
        if resp is not None:
            try:
                resp.shutdown() if hasattr(resp, "shutdown") else resp.release_conn()
            except Exception:   # already closed
                pass
        self._thread.join(timeout=5)

    def _query(self, **extra) -> dict:
        q = {k: v for k, v in extra.items() if v is not None}
        if self.spec.field_selector:
            q["fieldSelector"] = self.spec.field_selector
        return q

    def _run(self) -> None:
        need_list = True
        while not self.store.stopped.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                need_list = self._watch()
            except Exception as e:   # connection refused, reset, TLS: back off, resume (or relist)
                if self.store.stopped.is_set():
                    return
                log.warning("informer %s: %r; retrying", self.rt.key, e)
                need_list = need_list or (isinstance(e, errors.ApiError) and e.code == 410)
                self.store.stopped.wait(RETRY_SECONDS)

    def _list(self) -> None:
        body = self.store.request("GET", path_of(self.rt, self.spec.namespace), self._query())
        fresh = {}
        for item in body.get("items") or ():
            self.store.typed(self.rt, item)
            fresh[_key(item)] = item
        rv = body["metadata"]["resourceVersion"]
        events = []
        with self.lock:
            old = self.objects
            for key, obj in fresh.items():
                before = old.get(key)
                if before is None:
                    events.append((ADDED, obj, None))
                elif before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                    events.append((MODIFIED, obj, before))
            for key, before in old.items():
                if key not in fresh:   # deleted while we were not watching: a tombstone
                    events.append((DELETED, before, before))
            self.objects = fresh
            self.resource_version = rv
            self.relists += 1
        for type_, obj, before in events:
            self.store.publish(Event(_rv(obj), self.rt, type_, obj, before))
        self.synced.set()

    def _watch(self) -> bool:
        """One watch until the server ends it; True when the informer must relist (410 Gone)."""
        query = self._query(watch="1", allowWatchBookmarks="true", resourceVersion=self.resource_version,
                            timeoutSeconds=str(WATCH_TIMEOUT_SECONDS))
        resp = self.store.open_stream(path_of(self.rt, self.spec.namespace), query)
        self._response = resp
        try:
            buffer = b""
            for chunk in resp.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip() and self._handle(json.loads(line)):
                        return True
                if self.store.stopped.is_set():
                    return False
        finally:
            self._response = None
            resp.release_conn()
        return False

    def _handle(self, event: dict) -> bool:
        type_, obj = event.get("type"), event.get("object") or {}
        if type_ == "ERROR":
            if obj.get("code") == 410:   # our resourceVersion was compacted away: list again
                log.info("informer %s: 410 Gone (%s); relisting", self.rt.key, obj.get("message"))
                return True
            raise errors.ApiError(obj.get("code") or 500, obj.get("reason") or "Unknown", obj.get("message") or "")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if type_ == "BOOKMARK":
            with self.lock:
                self.resource_version = rv or self.resource_version
            return False
        self.store.typed(self.rt, obj)
        key = _key(obj)
        with self.lock:
            before = self.objects.get(key)
            if type_ == DELETED:
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self.resource_version = rv or self.resource_version
        if type_ == ADDED and before is not None:
            type_ = MODIFIED   # a resumed watch may repeat an object we already hold
        self.store.publish(Event(_rv(obj), self.rt, type_, obj, before))
        return False

    def get(self, namespace: str | None, name: str) -> dict | None:
        with self.lock:
            return self.objects.get((namespace or "", name))

    def snapshot(self, namespace: str | None) -> tuple[list[dict], int]:
        with self.lock:
            keys = sorted(k for k in self.objects if namespace is None or k[0] == namespace)
            return [self.objects[k] for k in keys], int(self.resource_version or 0)


class RemoteStore:
    """kubesim.store.Store's kubelet-facing methods against a real API server (see the module docstring)."""

    def __init__(self, api_client, informers: tuple[Informed, ...] | list[Informed] = (),
                 user_agent: str = "kubesim") -> None:
        self.api_client = api_client
        configuration = api_client.configuration
        self.host = configuration.host.rstrip("/")
        self._pool = api_client.rest_client.pool_manager
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        if configuration.api_key.get("authorization"):   # token users; certificate users authenticate via TLS
            self._headers["Authorization"] = configuration.get_api_key_with_prefix("authorization")
        self._listeners: list[Listener] = []
        self._listener_lock = threading.Lock()
        self.stopped = threading.Event()
        self.informers = [_Informer(self, spec) for spec in informers]

    @classmethod
    def from_kubeconfig(cls, path: str, informers=(), user_agent: str = "kubesim") -> "RemoteStore":
        from kubernetes import config
        return cls(config.new_client_from_config(config_file=path), informers, user_agent)

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "RemoteStore":
        """Start every informer and wait for its first list."""
        for informer in self.informers:
            informer.start()
        deadline = time.monotonic() + timeout
        for informer in self.informers:
            if not informer.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"informer {informer.rt.key} did not list within {timeout:.0f} s")
        return self

    def close(self) -> None:
        self.stopped.set()
        for informer in self.informers:
            informer.stop()
        self.api_client.close()

    # ---- HTTP ---------------------------------------------------------------------------------------
    def _url(self, path: str, query: dict | None) -> str:
        return self.host + path + (f"?{urlencode(query)}" if query else "")

    def request(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
                content_type: str = "application/json") -> dict:
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = self._pool.request(method, self._url(path, query), body=data, headers=headers,
                                  timeout=REQUEST_TIMEOUT, retries=False)
        if not 200 <= resp.status < 300:
            raise _api_error(resp)
        return json.loads(resp.data) if resp.data else {}

    def open_stream(self, path: str, query: dict) -> urllib3.BaseHTTPResponse:
        resp = self._pool.request("GET", self._url(path, query), headers=self._headers, preload_content=False,
                                  timeout=urllib3.Timeout(connect=REQUEST_TIMEOUT,
                                                          read=WATCH_TIMEOUT_SECONDS + 30), retries=False)
        if not 200 <= resp.status < 300:
            resp.read()
            error = _api_error(resp)
            resp.release_conn()
            raise error
        return resp

    @staticmethod
    def typed(rt: ResourceType, obj: dict) -> dict:
        """List items come without apiVersion/kind; events and owner references need them."""
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        return obj

    # ---- listeners ----------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        with self._listener_lock:
            self._listeners.append(listener)

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:   # one listener's bug must not stop the informer
                log.exception("listener failed on %s %s", event.type, event.resource.key)

    # ---- reads ----------------------------------------------------------------------------------------
    def _informer(self, rt: ResourceType, namespace: str | None, name: str | None = None) -> _Informer | None:
        for informer in self.informers:
            if informer.spec.covers(rt, namespace):
                return informer
        return None

    def find(self, rt: ResourceType, namespace: str | None, name: str) -> dict | None:
        """From an informer that holds the whole (resource, namespace), else a GET (None on 404)."""
        informer = self._informer(rt, namespace)
        if informer is not None and informer.synced.is_set():
            obj = informer.get(namespace if rt.namespaced else None, name)
            return copy_json(obj) if obj is not None else None
        for informer in self.informers:   # a field-selected informer may hold it; else ask the server
            if informer.rt.key == rt.key and informer.synced.is_set():
                obj = informer.get(namespace if rt.namespaced else None, name)
                if obj is not None:
                    return copy_json(obj)
        try:
            return self.get(rt, namespace, name)
        except errors.ApiError as e:
            if e.code == 404:
                return None
            raise

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        return self.typed(rt, self.request("GET", path_of(rt, namespace, name)))

    def snapshot(self, rt: ResourceType, namespace: str | None = None) -> tuple[list[dict], int]:
        """Shared, read-only objects sorted by namespace/name and the list's RV. An informer of the type
        answers, a field-selected one with what it selects (a kubelet's view: its pods, its Node); else a LIST."""
        informer = self._informer(rt, namespace) or next(
            (i for i in self.informers if i.rt.key == rt.key and i.spec.namespace in (None, namespace)), None)
        if informer is not None:
            informer.synced.wait(REQUEST_TIMEOUT)
            return informer.snapshot(namespace)
        body = self.request("GET", path_of(rt, namespace))
        items = sorted((self.typed(rt, o) for o in body.get("items") or ()), key=_key)
        return items, int(body["metadata"].get("resourceVersion") or 0)

    def list(self, rt: ResourceType, namespace: str | None = None) -> list[dict]:
        return [copy_json(o) for o in self.snapshot(rt, namespace)[0]]

    # ---- writes ---------------------------------------------------------------------------------------
    # echo/adopt/touches are the in-process store's copy-avoidance hints: accepted and ignored here.
    def create(self, rt: ResourceType, obj: dict, dry_run: bool = False, echo: bool = True,
               adopt: bool = False) -> dict | None:
        body = self.typed(rt, copy_json(obj))
        namespace = (body["metadata"].get("namespace") or "default") if rt.namespaced else None
        query = {"dryRun": "All"} if dry_run else None
        return self.typed(rt, self.request("POST", path_of(rt, namespace), query, body))

    def update(self, rt: ResourceType, obj: dict, subresource: str | None = None, dry_run: bool = False,
               allow_create: bool = False, echo: bool = True, adopt: bool = False) -> dict | None:
        """PUT, guarded by metadata.resourceVersion when given (409 Conflict when stale).

        A status update carries only status (and name/namespace/resourceVersion), as the kubelet writes it;
        the rest is filled in from the object as last seen so the PUT does not drop labels or annotations
        (the status subresource takes metadata from the body)."""
        meta = obj.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if rt.namespaced else None
        body = copy_json(obj)
        if subresource == "status":
            base = self._latest(rt, namespace, meta["name"], meta.get("resourceVersion"))
            body = dict(copy_json(base), status=body.get("status"))
            if meta.get("resourceVersion"):
                body["metadata"]["resourceVersion"] = meta["resourceVersion"]
        self.typed(rt, body)
        query = {"dryRun": "All"} if dry_run else None
        try:
            return self.typed(rt, self.request("PUT", path_of(rt, namespace, meta["name"], subresource), query,
                                               body))
        except errors.ApiError as e:
            if e.code == 404 and allow_create and subresource is None:
                return self.create(rt, obj, dry_run)
            raise

    def _latest(self, rt: ResourceType, namespace: str | None, name: str, rv: str | None) -> dict:
        """The object at resourceVersion rv when an informer holds that version, else a GET."""
        for informer in self.informers:
            if informer.rt.key == rt.key:
                obj = informer.get(namespace, name)
                if obj is not None and (rv is None or obj["metadata"].get("resourceVersion") == rv):
                    return obj
        return self.get(rt, namespace, name)

    def mutate(self, rt: ResourceType, namespace: str | None, name: str, fn: Callable[[dict], None],
               subresource: str | None = None, echo: bool = True,
               touches: tuple[str, ...] | None = None) -> dict | None:
        """GET, fn, PUT with the read resourceVersion; a 409 (someone wrote in between) starts over,
        MUTATE_ATTEMPTS times. 404 raises ApiError like the in-process store."""
        namespace = namespace if rt.namespaced else None
        for attempt in range(MUTATE_ATTEMPTS):
            current = self.get(rt, namespace, name)
            fn(current)
            try:
                return self.typed(rt, self.request("PUT", path_of(rt, namespace, name, subresource), None,
                                                   current))
            except errors.ApiError as e:
                if e.code != 409 or attempt == MUTATE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def remove(self, rt: ResourceType, namespace: str | None, name: str) -> dict | None:
        """Delete at once (gracePeriodSeconds=0), what the kubelet sends once a pod's containers are gone;
        preconditioned on the uid it knows, so a new pod of the same name is not deleted. None when absent."""
        namespace = namespace if rt.namespaced else None
        known = None
        for informer in self.informers:
            if informer.rt.key == rt.key:
                known = informer.get(namespace, name) or known
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        if known is not None:
            body["preconditions"] = {"uid": known["metadata"]["uid"]}
        try:
            self.request("DELETE", path_of(rt, namespace, name), None, body)
        except errors.ApiError as e:
            if e.code == 404:
                return None
            raise
        return known

    def delete(self, rt: ResourceType, namespace: str | None, name: str, grace_period: int | None = None,
               propagation: str | None = None, preconditions: dict | None = None, dry_run: bool = False,
               echo: bool = True) -> dict | None:
        body: dict = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        if propagation:
            body["propagationPolicy"] = propagation
        if preconditions:
            body["preconditions"] = preconditions
        if dry_run:
            body["dryRun"] = ["All"]
        return self.request("DELETE", path_of(rt, namespace if rt.namespaced else None, name), None, body)


def _key(obj: dict) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace") or "", meta["name"]


def _rv(obj: dict) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


__all__ = ["RemoteStore", "Informed", "path_of"]
