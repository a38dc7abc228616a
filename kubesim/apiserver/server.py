"""The HTTP front of kubesim: a ThreadingHTTPServer that real Kubernetes clients talk to.

Here: the server's lifecycle, the request log, non-resource paths and fault injection. Elsewhere in
this package: routing.py (URL -> verb/resource), handlers.py (REST semantics), discovery.py, openapi.py,
watch.py, patch.py and managed.py (server-side apply), validation.py, defaults.py, tables.py,
selectors.py, allocators.py (ClusterIPs, NodePorts), protobuf.py (kubectl's typed-client bodies),
reviews.py (SelfSubjectAccessReview).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .. import errors
from ..config import ClusterConfig
from . import discovery, openapi, reviews
from .handlers import Request, Response, ResourceHandlers
from .routing import not_found, resolve, truthy
from .watch import BOOKMARK_SECONDS

log = logging.getLogger("kubesim.apiserver")
REQUEST_LOG_SIZE = 100_000
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubesim"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without this, Nagle plus delayed ACKs add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.api._connections.add(self.connection)

    def finish(self) -> None:
        self.server.api._connections.discard(self.connection)
        super().finish()

    def _serve(self) -> None:
        self.server.api._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format, *args) -> None:  # the request log replaces http.server's stderr lines
        pass


class ApiServer:
    def __init__(self, store, config: ClusterConfig, faults=None, runtime=None):
        self.store = store
        self.config = config
        self.faults = faults
        self.handlers = ResourceHandlers(store, config, runtime)
        self.request_log: list[dict] = []
        self._log_lock = threading.Lock()
        self.bookmark_seconds = BOOKMARK_SECONDS  # how often watches with allowWatchBookmarks get one
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watches: set = set()
        self._connections: set = set()   # open client sockets, closed on stop so no keep-alive outlives us
        self._watches_lock = threading.Lock()
        self.url = ""

    @property
    def runtime(self):
        return self.handlers.runtime

    @runtime.setter
    def runtime(self, runtime) -> None:
        self.handlers.runtime = runtime

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> str:
        self._httpd = _HTTPServer((self.config.host, self.config.port), _Handler)
        self._httpd.api = self
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="kubesim-apiserver", daemon=True)
        self._thread.start()
        # Loading the upstream schemas takes about a second: do it now rather than in the first write.
        threading.Thread(target=openapi.root_document, args=(self.config.kubernetes_version,),
                         name="kubesim-apiserver-schemas", daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        with self._watches_lock:
            for watch in list(self._watches):
                watch.close()
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None

    def clear_request_log(self) -> None:
        with self._log_lock:
            self.request_log.clear()

    def _register_watch(self, watch) -> None:
        with self._watches_lock:
            self._watches.add(watch)

    def _unregister_watch(self, watch) -> None:
        with self._watches_lock:
            self._watches.discard(watch)

    # ---- one request ---------------------------------------------------------------------------------
    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        url = urlsplit(http.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        entry = {"method": http.command, "path": url.path, "query": query, "status": 0, "ms": 0.0, "verb": "",
                 "resource": "", "subresource": None, "namespace": None, "name": None,
                 "user_agent": http.headers.get("User-Agent", "")}
        try:
            length = http.headers.get("Content-Length") or "0"
            if not length.isdigit():
                raise errors.bad_request(f"invalid Content-Length: {length!r}")
            body = http.rfile.read(int(length)) if int(length) > 0 else b""
            response = self._route(http, url.path, query, body, entry, started)
        except errors.ApiError as e:
            response = Response.status(e)
        except Exception as e:  # a bug must not take the server down; report it like the apiserver does
            log.error("internal error serving %s %s: %s", http.command, http.path, traceback.format_exc())
            response = Response.status(errors.ApiError(500, "InternalError", f"Internal error occurred: {e}"))
        if response is not None:  # None: a stream that logged and wrote itself
            self._log(entry, response.code, started)  # before the reply, so a client never outruns its entry
            self._write(http, response)

    def _log(self, entry: dict, status: int, started: float) -> None:
        entry["status"] = status
        entry["ms"] = round((time.monotonic() - started) * 1000, 3)
        with self._log_lock:
            self.request_log.append(entry)
            if len(self.request_log) > REQUEST_LOG_SIZE:  # trim in steps so appends stay cheap
                del self.request_log[:REQUEST_LOG_SIZE // 10]
        log.debug("%s %s %s -> %d (%.1f ms)", entry["method"], entry["path"], entry["query"], status, entry["ms"])

    def _stream(self, entry: dict, started: float, serve) -> None:
        """Log a streaming response as it starts (status 200) and complete its duration when it ends."""
        self._log(entry, 200, started)
        try:
            serve()
        finally:
            entry["ms"] = round((time.monotonic() - started) * 1000, 3)

    @staticmethod
    def _write(http: BaseHTTPRequestHandler, response: Response) -> None:
        http.send_response(response.code)
        if "Content-Type" not in response.headers:
            http.send_header("Content-Type", response.content_type)
        http.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            http.send_header(name, value)
        if "Cache-Control" not in response.headers:
            http.send_header("Cache-Control", "no-cache, private")
        http.end_headers()
        if http.command != "HEAD":
            http.wfile.write(response.body)

    def _route(self, http, path: str, query: dict, body: bytes, entry: dict, started: float) -> Response | None:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        if parts[:2] == ["kubesim", "faults"] and self.faults is not None:  # admin API, not Kubernetes'
            code, answer = self.faults.handle_admin(http.command, path, body)
            return Response.json(answer, code)
        document = self._non_resource(parts, query, http.headers.get("Accept", ""))
        if document is not None:
            return document
        group, version, rest = self._group_version(parts)
        if reviews.is_review(group, version, rest):
            entry.update(verb="create", resource=reviews.KEY)
            code, review = reviews.self_subject_access_review(http.command, body)
            return Response.json(review, code)
        if not rest:
            resource_list = discovery.api_resource_list(group, version)
            if resource_list is None:
                raise not_found()
            return Response.json(resource_list)
        route = resolve(http.command, group, version, rest, query)
        entry.update(verb=route.verb, resource=route.rt.key, subresource=route.subresource,
                     namespace=route.namespace, name=route.name)
        if self.faults is not None:
            fault = self.faults.api_fault(route.verb, route.rt.key)
            if fault is not None:
                raise fault
            delay = self.faults.api_latency(route.verb, route.rt.key)
            if delay:
                time.sleep(delay)
        request = Request(http.command, route, query, dict(http.headers.items()), body)
        if route.verb == "watch":
            stream = self.handlers.watch(request, self._register_watch, self._unregister_watch)
            stream.bookmark_seconds = self.bookmark_seconds
            self._stream(entry, started, lambda: stream.serve(http))
            return None
        if route.subresource in ("exec", "attach"):
            session = self.handlers.exec_session(request, parse_qs(urlsplit(http.path).query))
            self._stream(entry, started, lambda: session(http))
            return None
        if route.subresource == "portforward":
            session = self.handlers.portforward_session(request)
            self._stream(entry, started, lambda: session(http))
            return None
        if route.subresource == "log" and truthy(query.get("follow")):
            follow = self.handlers.follow_logs(request)
            self._stream(entry, started, lambda: follow(http))
            return None
        return self.handlers.handle(request)

    def _non_resource(self, parts: list[str], query: dict, accept: str) -> Response | None:
        """Version, health, OpenAPI and group discovery; None for API group-version paths."""
        if parts == ["version"]:
            return Response.json(self._version())
        if parts[:1] and "/" + parts[0] in HEALTH_PATHS:
            return Response(200, b"ok", "text/plain; charset=utf-8")
        if parts[:1] == ["openapi"]:
            return openapi.serve(parts[1:], query, self.config.kubernetes_version)
        if parts in (["api"], ["apis"]) and discovery.wants_aggregated(accept):
            document = discovery.aggregated_discovery(core=parts == ["api"])
            return Response.json(document, headers={"Content-Type": discovery.AGGREGATED_CONTENT_TYPE,
                                                    "Vary": "Accept"})
        if parts == ["api"]:
            return Response.json(discovery.api_versions(self.url.split("//", 1)[-1]))
        if parts == ["apis"]:
            return Response.json(discovery.api_group_list())
        if parts[:1] == ["apis"] and len(parts) == 2:
            group = discovery.api_group(parts[1])
            if group is None:
                raise not_found()
            return Response.json(group)
        return None

    @staticmethod
    def _group_version(parts: list[str]) -> tuple[str, str, list[str]]:
        if parts[:1] == ["api"] and len(parts) >= 2:
            return "", parts[1], parts[2:]
        if parts[:1] == ["apis"] and len(parts) >= 3:
            return parts[1], parts[2], parts[3:]
        raise not_found()

    def _version(self) -> dict:
        version = self.config.kubernetes_version
        major, minor = version.lstrip("v").split(".")[:2]
        return {"major": major, "minor": minor, "gitVersion": version,
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.6", "compiler": "gc",
                "platform": "linux/amd64", "emulationMajor": major, "emulationMinor": minor,
                "minCompatibilityMajor": major, "minCompatibilityMinor": minor}
