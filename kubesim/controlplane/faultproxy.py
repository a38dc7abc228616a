"""The faults proxy: a TLS reverse proxy in front of the real kube-apiserver that injects the fault registry's API
faults (``api-error``, ``api-latency``) into clients' requests, as kubesim's own API server does, and serves the
registry's admin endpoint (``/kubesim/faults``, what ``python -m kubesim fault`` calls).

    proxy = FaultProxy(control_plane, faults).start()
    proxy.write_kubeconfig("clients.kubeconfig")     # the admin's kubeconfig, its server the proxy

Each request is classified as kube-apiserver's RequestInfo does (verb, resource key such as "pods" or
"apps/deployments"); the registry's ``api_fault``/``api_latency`` decide. Anything else goes to the API server
unchanged, byte for byte, over HTTP/1.1 (the only protocol offered by ALPN, which every Kubernetes client speaks):
chunked responses (watches, follow logs) are relayed chunk by chunk as they come, and a ``101 Switching
Protocols`` (exec, attach, port-forward, SPDY or WebSocket) turns the connection into a byte pipe both ways.

Identity, so RBAC still judges the caller: a bearer token (``Authorization``) passes through untouched. A caller
with a client certificate (verified against the cluster CA, as kube-apiserver's --client-ca-file does) is
forwarded through kube-apiserver's **front-proxy (request header) authentication**: the proxy connects with the
front-proxy client certificate (``--requestheader-client-ca-file``, ``--requestheader-allowed-names=
front-proxy-client``) and sets ``X-Remote-User`` to the certificate's CN and one ``X-Remote-Group`` per O, as the
aggregation layer does. ``X-Remote-*`` headers a caller sends are always dropped (they would assert an identity).
The node, controller-manager and scheduler traffic does not come here: faults strike clients only.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from ..faults import ADMIN_PATH
from . import HOST, API_SANS

log = logging.getLogger("kubesim.faultproxy")

MAX_HEAD = 1 << 20               # bytes of a request or response head (line and headers)
TRUE_VALUES = ("1", "t", "T", "TRUE", "true", "True")    # strconv.ParseBool, how the API server reads ?watch=
# HTTP method -> RequestInfo's verb before the list/watch/deletecollection refinement.
METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}
NAMESPACE_SUBRESOURCES = ("status", "finalize")


# ---- RequestInfo --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestInfo:
    """What kube-apiserver's RequestInfoFactory makes of a request (k8s.io/apiserver/pkg/endpoints/request)."""
    is_resource: bool
    verb: str
    resource_key: str = ""       # "pods", "apps/deployments": the fault registry's resource key (no subresource)
    subresource: str = ""
    namespace: str = ""
    name: str = ""


def request_info(method: str, target: str) -> RequestInfo:
    url = urlsplit(target)
    parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
    verb = METHOD_VERBS.get(method, method.lower())
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return RequestInfo(False, method.lower())
    if not rest:                                  # /api/v1, /apis/apps/v1: discovery
        return RequestInfo(False, method.lower())
    if rest[0] == "watch":                        # the deprecated /watch/ paths
        verb, rest = "watch", rest[1:]
    namespace = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    if not rest:
        return RequestInfo(False, method.lower())
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    query = parse_qs(url.query, keep_blank_values=True)
    if not name and verb == "get":
        verb = "watch" if query.get("watch", [""])[-1] in TRUE_VALUES else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, verb, f"{group}/{resource}" if group else resource, subresource, namespace, name)


# ---- one TLS connection with a read buffer of our own ------------------------------------------------------------
class _Conn:
    """A socket and what has been read from it but not consumed (so a pipe can flush it before splicing)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def readline(self) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end + 1])
                del self.buf[:end + 1]
                return line
            if len(self.buf) > MAX_HEAD:
                raise ValueError("line too long")
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a message")
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_some(self) -> bytes:
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            return data
        return self.sock.recv(65536)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class _Head:
    line: bytes                       # the request or status line, CRLF included
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in reversed(self.headers) if k.lower() == name), None)

    def encode(self) -> bytes:
        return self.line + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.headers) + b"\r\n"

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for k, v in self.headers if k.lower() == name.lower() for t in v.split(",")}


def _read_head(conn: _Conn) -> _Head | None:
    line = conn.readline()
    while line in (b"\r\n", b"\n"):              # RFC 9112: ignore empty lines before a request line
        line = conn.readline()
    if not line:
        return None
    headers, size = [], len(line)
    while True:
        raw = conn.readline()
        size += len(raw)
        if size > MAX_HEAD:
            raise ValueError("message head too large")
        if raw in (b"\r\n", b"\n", b""):
            return _Head(line, headers)
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


def _read_chunked(conn: _Conn, out) -> None:
    """Relay a chunked body as it arrives, chunk by chunk (a watch's events), with its trailer."""
    while True:
        size_line = conn.readline()
        if not size_line:
            raise ConnectionError("connection closed in a chunked body")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            trailer = size_line
            while True:
                raw = conn.readline()
                trailer += raw
                if raw in (b"\r\n", b"\n", b""):
                    out(trailer)
                    return
        out(size_line + conn.read_exact(size + 2))


def _read_body(conn: _Conn, head: _Head, out, until_close: bool) -> None:
    if "chunked" in head.tokens("Transfer-Encoding"):
        _read_chunked(conn, out)
    elif head.get("Content-Length") is not None:
        remaining = int(head.get("Content-Length"))
        while remaining > 0:
            data = conn.read_exact(min(remaining, 65536))
            remaining -= len(data)
            out(data)
    elif until_close:                                   # a response without framing: it ends with the connection
        while data := conn.read_some():
            out(data)


def _splice(a: _Conn, b: _Conn) -> None:
    """Bytes both ways until either side closes (an upgraded connection: exec, attach, port-forward)."""
    for src, dst in ((a, b), (b, a)):
        if src.buf:
            dst.send(src.read_some())
    peers = {a.sock: b, b.sock: a}
    sources = {a.sock: a, b.sock: b}
    while True:
        ready = [s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready, _, _ = select.select(list(peers), [], [])
        for sock in ready:
            data = sources[sock].sock.recv(65536)
            if not data:
                return
            peers[sock].send(data)


def _status_response(code: int, body: dict, headers: dict | None = None) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {code} {http.client.responses.get(code, '')}",
             "Content-Type: application/json", "Cache-Control: no-cache, private", f"Content-Length: {len(data)}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _identity(peer_cert: dict | None) -> tuple[str, list[str]] | None:
    """CN and the Os of a verified client certificate, as kube-apiserver's x509 authenticator reads them."""
    if not peer_cert:
        return None
    attrs = [attr for rdn in peer_cert.get("subject", ()) for attr in rdn]
    user = next((v for k, v in attrs if k == "commonName"), None)
    return (user, [v for k, v in attrs if k == "organizationName"]) if user else None


# ---- the proxy ----------------------------------------------------------------------------------------------------
class FaultProxy:
    """Listens on 127.0.0.1 at a free port (``url``); start() / stop(). One thread per client connection."""

    def __init__(self, control_plane, faults, name: str = "fault-proxy"):
        self.control_plane = control_plane
        self.faults = faults
        self.name = name
        self.url = ""
        self._listener: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._upstream_host, self._upstream_port = urlsplit(control_plane.url).hostname, \
            urlsplit(control_plane.url).port

    def start(self) -> "FaultProxy":
        cp = self.control_plane
        self._listener = socket.create_server((HOST, 0))
        port = self._listener.getsockname()[1]
        serving = cp.pki.issue(f"{self.name}-{port}", "kubesim-fault-proxy", server=True, dns_names=API_SANS,
                               ips=(HOST, cp.service_ip))
        self._server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ssl.load_cert_chain(serving.cert, serving.key)
        self._server_ssl.verify_mode = ssl.CERT_OPTIONAL         # a client certificate, or a token
        self._server_ssl.load_verify_locations(cp.ca_file)
        self._server_ssl.set_alpn_protocols(["http/1.1"])
        # To the API server: as the front proxy for certificate callers, with no certificate for token callers.
        self._as_front_proxy = self._client_context(cp.front_proxy_client)
        self._anonymous = self._client_context(None)
        self.url = f"https://{HOST}:{port}"
        threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True).start()
        log.info("faults proxy %s in front of %s", self.url, cp.url)
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() (close alone does not, on Linux)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_kubeconfig(self, path: str) -> str:
        """The control plane's admin kubeconfig with the proxy as its server."""
        with open(self.control_plane.kubeconfig_path) as f:
            config = json.load(f)
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
        return path

    # ---- connections --------------------------------------------------------------------------------------------
    def _client_context(self, client_cert) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.control_plane.ca_file)
        if client_cert is not None:
            context.load_cert_chain(client_cert.cert, client_cert.key)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _track(self, conn: _Conn) -> _Conn:
        with self._lock:
            self._conns.add(conn)
        if self._stopped.is_set():
            conn.close()
        return conn

    def _untrack(self, conn: _Conn | None) -> None:
        if conn is not None:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve_connection, args=(sock,), name=f"{self.name}-conn",
                             daemon=True).start()

    def _connect_upstream(self, identity) -> _Conn:
        raw = socket.create_connection((self._upstream_host, self._upstream_port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self._as_front_proxy if identity else self._anonymous
        sock = context.wrap_socket(raw, server_hostname=self._upstream_host)
        sock.settimeout(None)                      # watches and exec sessions last as long as the caller wants
        return self._track(_Conn(sock))

    def _serve_connection(self, raw: socket.socket) -> None:
        client = upstream = None
        try:
            raw.settimeout(30)                     # the handshake; afterwards a keep-alive connection may idle
            sock = self._server_ssl.wrap_socket(raw, server_side=True)
            sock.settimeout(None)
            client = self._track(_Conn(sock))
            identity = _identity(sock.getpeercert())
            while True:
                head = _read_head(client)
                if head is None:
                    return
                keep, upstream = self._serve_request(client, upstream, head, identity)
                if not keep:
                    return                         # the exchange ended the connection
        except (OSError, ValueError, ssl.SSLError) as error:
            if not self._stopped.is_set():
                log.debug("faults proxy connection ended: %s", error)
        finally:
            self._untrack(upstream)
            self._untrack(client)

    def _serve_request(self, client: _Conn, upstream: _Conn | None, head: _Head,
                       identity) -> tuple[bool, _Conn | None]:
        """One request: answered here (admin endpoint, a fault) or relayed. Whether the client connection goes on,
        and the upstream connection to go on with (None: none open)."""
        method, target, _ = head.line.decode("latin-1").split(" ", 2)
        if "100-continue" in head.tokens("Expect"):   # the body is read here, before anything is forwarded
            client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = [(k, v) for k, v in head.headers if not k.lower().startswith("x-remote-") and k.lower() != "expect"]
        if identity:
            headers += [("X-Remote-User", identity[0])] + [("X-Remote-Group", g) for g in identity[1]]
        request = _Head(head.line, headers)
        body = bytearray()
        _read_body(client, request, body.extend, until_close=False)
        keep_alive = "close" not in request.tokens("Connection")

        if urlsplit(target).path.rstrip("/") == ADMIN_PATH or urlsplit(target).path.startswith(ADMIN_PATH + "/"):
            client.send(self._admin(method, target, request, bytes(body), identity))
            return keep_alive, upstream
        info = request_info(method, target)
        if info.is_resource:
            fault = self.faults.api_fault(info.verb, info.resource_key)
            if fault is not None:
                client.send(_status_response(fault.code, fault.status(), fault.headers))
                return keep_alive, upstream
            delay = self.faults.api_latency(info.verb, info.resource_key)
            if delay:
                time.sleep(delay)

        message = request.encode() + bytes(body)
        for attempt in (1, 2):                     # a kept-alive upstream connection the server has since closed
            reused = upstream is not None
            if upstream is None:
                upstream = self._connect_upstream(identity)
            try:
                upstream.send(message)
                response = _read_head(upstream)
            except (OSError, ssl.SSLError):
                response = None
            if response is not None:
                break
            self._untrack(upstream)
            upstream = None
            if not reused:
                client.send(_status_response(502, _failure(502, "the API server closed the connection")))
                return False, None
        while response.line.split(b" ", 2)[1].startswith(b"1") and response.line.split(b" ", 2)[1] != b"101":
            client.send(response.encode())           # an interim response (100 Continue); the real one follows
            response = _read_head(upstream)
        status = int(response.line.split(b" ", 2)[1])
        client.send(response.encode())
        if status == 101:
            _splice(client, upstream)
            return False, upstream
        if method != "HEAD" and status not in (204, 304):
            _read_body(upstream, response, client.send, until_close=True)
        framed = response.get("Content-Length") is not None or "chunked" in response.tokens("Transfer-Encoding") \
            or method == "HEAD" or status in (204, 304)
        if not framed or "close" in response.tokens("Connection"):
            return False, upstream
        return keep_alive, upstream

    # ---- the admin endpoint -------------------------------------------------------------------------------------
    def _admin(self, method: str, target: str, request: _Head, body: bytes, identity) -> bytes:
        """The registry's admin endpoint, for whom RBAC lets use it: a SelfSubjectAccessReview as the caller of
        the non-resource path (cluster-admin and system:masters may; grant others `nonResourceURLs`)."""
        path = urlsplit(target).path
        verb = method.lower()
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"nonResourceAttributes": {"path": path, "verb": verb}}}
        headers = {k: v for k, v in request.headers if k.lower() in ("authorization",) or
                   k.lower().startswith("x-remote-") or k.lower().startswith("impersonate-")}
        headers["Content-Type"] = "application/json"
        status, data = self._post_as_caller("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review,
                                            headers, identity)
        if status != 201:                  # 401 (no identity) or 403: the API server's own Status
            return _status_response(status, json.loads(data or b"{}"))
        if not json.loads(data)["status"].get("allowed"):
            user = self._username(headers, identity)
            return _status_response(403, _failure(403, f'forbidden: User "{user}" cannot {verb} path "{path}"',
                                                  "Forbidden"))
        code, answer_body = self.faults.handle_admin(method, target, body)
        return _status_response(code, answer_body)


    def _post_as_caller(self, path: str, body: dict, headers: dict, identity) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            self._upstream_host, self._upstream_port, timeout=30,
            context=self._as_front_proxy if identity else self._anonymous)
        try:
            connection.request("POST", path, json.dumps(body), headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()

    def _username(self, headers: dict, identity) -> str:
        """Who the API server takes the caller for (a SelfSubjectReview), for a refusal's message."""
        status, data = self._post_as_caller("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                                            headers, identity)
        return json.loads(data)["status"]["userInfo"]["username"] if status == 201 else "unknown"


def _failure(code: int, message: str, reason: str = "InternalError") -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
