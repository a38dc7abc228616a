"""The kubelet API of a kubesim node on the real control plane: what kube-apiserver proxies `pods/log`, `pods/exec`
and `pods/portforward` to (https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>).

* `GET /containerLogs/<ns>/<pod>/<container>` with `follow`, `tailLines`, `limitBytes`, `timestamps`,
  `sinceSeconds`, `sinceTime` and `previous`: the instance is chosen from the pod's status as the kubelet does,
  its CRI log file read like the kubelet's ReadLogs (kubesim/containerlogs.py);
* `/exec/<ns>/<pod>/<container>?command=…&input=1&output=1&error=1` over **WebSocket** (`v5.channel.k8s.io`,
  `v4.channel.k8s.io`): the node declares the `ExtendWebSocketsToKubelet` feature in its status, so a 1.36
  API server hands kubectl's and the Python client's WebSocket straight through instead of translating it to
  SPDY (a SPDY-only client gets a 400 here, which the API server relays). The command runs in the container's
  sandbox (ProcessRuntime.exec_launch); its exit code comes back as the v4 error-channel Status.
* `/portForward/<ns>/<pod>` over **WebSocket** with the subprotocol `SPDY/3.1+portforward.k8s.io` (kubectl's
  tunnelled port-forward, which the API server hands to a node declaring `ExtendWebSocketsToKubelet` unchanged):
  SPDY/3.1 inside the binary messages, each forwarded connection joined to the pod's port (kubesim/portforward.py).
* `GET /healthz`.

TLS with a serving certificate for the node's IP from the cluster CA; a client must present a certificate of
that CA (kube-apiserver's `--kubelet-client-certificate`), as the real kubelet's x509 authentication asks.
* `/attach/<ns>/<pod>/<container>` over the same WebSocket channels: the running instance's output from now on
  (its CRI log followed), until it stops; with `input=1`, channel 0 to its stdin when the container has
  `stdin: true` (`stdinOnce`: closed when the first attach ends, as the CRI runtimes do); no TTY.

Not served: /pods, /stats; a TTY (`tty: true` containers get pipes, as if it were false).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import ssl
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .containerlogs import LogOptions, LogUnavailable, follow_output, log_container_id, read_log, serve_log
from .portforward import PROTOCOL as PORTFORWARD_PROTOCOL, PortForwardSession, Tunnel
from .runtime import instance_of

log = logging.getLogger("kubesim.kubeletapi")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


class KubeletApi:
    """One node's kubelet API on ``host`` (``port``, 0: a free one); ``runtime``: its ProcessRuntime; ``pods(namespace, name)``:
    the pod as the kubelet last saw it (its cache), or None."""

    def __init__(self, node: str, host: str, runtime, pods, serving_cert, ca_file: str, port: int = 0) -> None:
        self.node, self.runtime, self.pods = node, runtime, pods
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(serving_cert.cert, serving_cert.key)
        context.load_verify_locations(ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"kubesim-kubeletapi-{node}",
                                        daemon=True)

    def start(self) -> "KubeletApi":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(api: KubeletApi):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args) -> None:
            log.debug("%s: " + fmt, api.node, *args)

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            query = parse_qs(url.query)
            if parts == ["healthz"]:
                return self._reply(200, "ok", "text/plain")
            if len(parts) == 4 and parts[0] == "containerLogs":
                return self._logs(*parts[1:], query)
            if len(parts) == 3 and parts[0] == "portForward":
                supervisor = self._supervisor(parts[1], parts[2])
                if supervisor is None:
                    return self._reply(404, "pod does not exist", "text/plain")
                serve_portforward(self, supervisor, api.runtime.network)
                return None
            if len(parts) == 4 and parts[0] in ("exec", "attach"):
                supervisor = self._supervisor(parts[1], parts[2])
                if supervisor is None:
                    return self._reply(404, f'pod "{parts[2]}" not found on node {api.node}', "text/plain")
                if parts[3] not in supervisor.container_names():
                    return self._reply(404, f'container "{parts[3]}" not found in pod "{parts[2]}"', "text/plain")
                if parts[0] == "attach":
                    serve_attach(self, supervisor, parts[3], query)
                    return None
                return self._exec(supervisor, parts[3], query)
            self._reply(404, "404 page not found", "text/plain")

        @staticmethod
        def _supervisor(namespace: str, name: str):
            """The pod's supervisor here, found by the uid of the pod now under that name."""
            pod = api.pods(namespace, name)
            return api.runtime.supervisor(pod["metadata"]["uid"]) if pod is not None else None

        def _reply(self, code: int, body: str, content_type: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        # ---- logs ----------------------------------------------------------------------------------
        def _logs(self, namespace: str, name: str, container: str, query: dict) -> None:
            """The kubelet's getContainerLogs: the options, the pod and container, the instance its status names."""
            try:
                options = LogOptions.from_query(query)
            except ValueError:
                return self._reply(422, '{"message": "Invalid request."}', "text/plain")
            pod = api.pods(namespace, name)
            if pod is None:
                return self._reply(404, f'pod "{name}" does not exist', "text/plain")
            spec = pod["spec"]
            if container not in [c["name"] for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]:
                return self._reply(404, f'container "{container}" not found in pod "{name}"', "text/plain")
            try:
                instance = instance_of(log_container_id(pod, container, options.previous))
            except LogUnavailable as error:
                return self._reply(400, str(error), "text/plain")
            uid = pod["metadata"]["uid"]
            path = api.runtime.log_path(uid, container, instance) if instance is not None else None
            serve_log(self, read_log(path, options, lambda: api.runtime.running(uid, container, instance)))

        def _exec(self, supervisor, container: str, query: dict) -> None:
            serve_exec(self, supervisor, container, query)

    return Handler


def serve_portforward(handler: BaseHTTPRequestHandler, supervisor, network) -> int:
    """Upgrade ``handler``'s request to a WebSocket carrying SPDY/3.1 (kubectl's tunnelled port-forward) and forward
    its connections to the pod's ports (``network.local`` maps a pod IP and port to where they listen); the HTTP
    status sent (101, or 400 with the reason)."""
    if PORTFORWARD_PROTOCOL not in _websocket_protocols(handler):
        return _refuse(handler, "unable to upgrade: no tunneling spdy protocols provided")
    _accept_websocket(handler, PORTFORWARD_PROTOCOL)
    sock, rfile, send_lock = handler.connection, handler.rfile, threading.Lock()

    def receive() -> bytes:
        while True:
            try:
                opcode, payload = _read_frame(rfile)
            except (EOFError, OSError, ValueError):
                return b""
            if opcode == 0x8:
                return b""
            if opcode == 0x9:
                send(payload, 0xA)
            elif payload:
                return payload

    def send(data: bytes, opcode: int = 0x2) -> None:
        with send_lock:
            sock.sendall(_ws_frame(opcode, data))

    def dial(port: int) -> socket.socket:
        host, local_port = network.local(supervisor.pod_ip, port)
        try:
            connection = socket.create_connection((host, local_port), timeout=5)
        except OSError as error:
            raise OSError(f"failed to connect to {supervisor.pod_ip}:{port} inside the pod's network: "
                          f"{error.strerror or error}") from None
        connection.settimeout(None)
        return connection

    # the kubelet's words: the pod's full name, and the uid of the request's path (the API server sends none)
    pod = supervisor.pod["metadata"]
    PortForwardSession(Tunnel(receive, send), dial, f'{pod["name"]}_{pod["namespace"]}, uid ').run()
    return 101


def _websocket_protocols(handler: BaseHTTPRequestHandler) -> list[str]:
    """The subprotocols a WebSocket upgrade request offers (none when it is not one)."""
    if handler.headers.get("Upgrade", "").lower() != "websocket":
        return []
    return [p.strip() for p in handler.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]


def _refuse(handler: BaseHTTPRequestHandler, message: str) -> int:
    """A 400 with ``message`` as text, as the kubelet answers an upgrade it cannot make."""
    data = message.encode()
    handler.send_response(400)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    return 400


def _accept_websocket(handler: BaseHTTPRequestHandler, protocol: str) -> None:
    """The 101 answer to a WebSocket upgrade with ``protocol``; the connection is the session's from here on."""
    accept = base64.b64encode(hashlib.sha1((handler.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept.decode())
    handler.send_header("Sec-WebSocket-Protocol", protocol)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True


def serve_exec(handler: BaseHTTPRequestHandler, supervisor, container: str, query: dict) -> int:
    """Upgrade ``handler``'s request to a WebSocket exec session in ``container`` and run it to the end; the HTTP
    status sent (101, or 400 with the reason). ``query``: parse_qs of the request (kubelet names input/output/
    error, or the API's stdin/stdout/stderr)."""
    offered = _websocket_protocols(handler)
    protocol = next((p for p in PROTOCOLS if p in offered), None)
    if protocol is None:
        return _refuse(handler, "kubesim serves exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only")
    command = query.get("command") or []
    if not command:
        return _refuse(handler, "you must specify at least one command for the container")
    try:
        launch = supervisor.exec_launch(container, command)
    except LookupError as error:
        return _refuse(handler, str(error))
    _accept_websocket(handler, protocol)
    _ExecSession(handler.connection, handler.rfile, launch, command, stdin=_flag(query, "input", "stdin"),
                 v5=protocol.startswith("v5")).run()
    return 101


def serve_attach(handler: BaseHTTPRequestHandler, supervisor, container: str, query: dict) -> int:
    """Upgrade ``handler``'s request to a WebSocket attach to ``container``: its output from now on, on the
    channels asked for (kubelet names output/error, the API's stdout/stderr), until it stops; the HTTP status sent.
    With stdin asked for (`input`/`stdin`), channel 0 goes to the container's stdin if it has one (`stdin: true`);
    without one the input is dropped, as a CRI runtime drops it for a container started without stdin."""
    protocol = next((p for p in PROTOCOLS if p in _websocket_protocols(handler)), None)
    if protocol is None:
        return _refuse(handler, "kubesim serves attach over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only")
    try:
        path, running, instance = supervisor.attach_output(container)
    except LookupError as error:
        return _refuse(handler, str(error))
    stdin, detach = supervisor.attach_input(container, instance) if _flag(query, "input", "stdin") else (None, None)
    _accept_websocket(handler, protocol)
    channels = {b"stdout": STDOUT if _flag(query, "output", "stdout") else None,
                b"stderr": STDERR if _flag(query, "error", "stderr") else None}
    try:
        _AttachSession(handler.connection, handler.rfile, path, running, channels, stdin, detach).run()
    finally:
        if detach is not None:
            detach()
    return 101


class _ChannelSession:
    """What attach and exec share over an upgraded connection: a channel's data as binary frames (one sender at a
    time), and the end: a Status on channel 3, a close frame, the write side shut."""

    def __init__(self, sock, rfile) -> None:
        self.sock, self.rfile = sock, rfile
        self._send_lock = threading.Lock()

    def _send(self, channel: int, data: bytes) -> None:
        self._frame(0x2, bytes([channel]) + data)

    def _frame(self, opcode: int, payload: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(_ws_frame(opcode, payload))
            except OSError:
                pass

    def _finish(self, status: dict) -> None:
        self._send(ERROR, json.dumps(status).encode())
        self._frame(0x8, struct.pack("!H", 1000))
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _AttachSession(_ChannelSession):
    """One attach over an upgraded connection: the container's new output to channels 1/2 while it runs (or until
    the client leaves), then a Success Status on channel 3 and a close frame."""

    def __init__(self, sock, rfile, path: str, running, channels: dict, stdin=None, detach=None) -> None:
        super().__init__(sock, rfile)
        self.path, self.running, self.channels, self.stdin, self.detach = path, running, channels, stdin, detach
        self._client_gone = threading.Event()

    def run(self) -> None:
        output = follow_output(self.path, lambda: self.running() and not self._client_gone.is_set())
        threading.Thread(target=self._read_client, daemon=True).start()
        for stream, text in output:
            if self.channels.get(stream) is not None:
                self._send(self.channels[stream], text)
        self._finish({"metadata": {}, "status": "Success"})

    def _read_client(self) -> None:
        """Channel 0 to the container's stdin (when attached to it) until the client closes or leaves; v5's CLOSE(0)
        ends this attach's stdin (stdinOnce: the container reads EOF)."""
        try:
            while True:
                opcode, payload = _read_frame(self.rfile)
                if opcode == 0x8:
                    break
                if opcode == 0x9:
                    self._frame(0xA, payload)
                elif opcode in (0x1, 0x2) and payload[:1] == bytes([STDIN]) and self.stdin is not None:
                    self.stdin.write(payload[1:])
                    self.stdin.flush()
                elif opcode in (0x1, 0x2) and payload[:2] == bytes([CLOSE, STDIN]) and self.detach is not None:
                    self.stdin = None
                    self.detach()
        except (OSError, ValueError, EOFError):
            pass
        self._client_gone.set()


class _ExecSession(_ChannelSession):
    """One exec over an upgraded connection: stdin from channel 0, stdout/stderr to channels 1/2, the exit
    status as a Status on channel 3, then a close frame."""

    def __init__(self, sock, rfile, launch, command: list[str], stdin: bool, v5: bool) -> None:
        super().__init__(sock, rfile)
        self.command, self.v5 = command, v5
        self.proc = subprocess.Popen(launch.argv, env=launch.env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def run(self) -> None:
        pumps = [threading.Thread(target=self._pump, args=(stream, channel), daemon=True)
                 for stream, channel in ((self.proc.stdout, STDOUT), (self.proc.stderr, STDERR))]
        for pump in pumps:
            pump.start()
        reader = threading.Thread(target=self._read_client, daemon=True)
        reader.start()
        code = self.proc.wait()
        for pump in pumps:
            pump.join()
        self._finish(_status(code, self.command))

    def _pump(self, stream, channel: int) -> None:
        for chunk in iter(lambda: stream.read1(32768), b""):
            self._send(channel, chunk)

    def _read_client(self) -> None:
        """Channel 0 to the command's stdin; v5's CLOSE(0) or the connection's end closes it."""
        try:
            while True:
                opcode, payload = _read_frame(self.rfile)
                if opcode == 0x8:
                    break
                if opcode == 0x9:
                    self._frame(0xA, payload)
                    continue
                if opcode not in (0x1, 0x2) or not payload:
                    continue
                channel, data = payload[0], payload[1:]
                if channel == STDIN and self.proc.stdin is not None and data:
                    self.proc.stdin.write(data)
                    self.proc.stdin.flush()
                elif channel == CLOSE and data[:1] == bytes([STDIN]) and self.proc.stdin is not None:
                    self.proc.stdin.close()
        except (OSError, ValueError, EOFError):
            pass
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass



def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked (server) WebSocket frame."""
    length = len(payload)
    header = bytes([0x80 | opcode])
    if length < 126:
        header += bytes([length])
    elif length < 65536:
        header += bytes([126]) + struct.pack("!H", length)
    else:
        header += bytes([127]) + struct.pack("!Q", length)
    return header + payload


def _read_frame(rfile) -> tuple[int, bytes]:
    """One client message (masked frames, continuation frames joined)."""
    message, first_opcode = b"", None
    while True:
        head = rfile.read(2)
        if len(head) < 2:
            raise EOFError
        fin, opcode = head[0] & 0x80, head[0] & 0x0F
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", rfile.read(8))[0]
        mask = rfile.read(4) if head[1] & 0x80 else b""
        payload = rfile.read(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if opcode >= 0x8:           # control frames may come between fragments
            return opcode, payload
        first_opcode = first_opcode if opcode == 0 else opcode
        message += payload
        if fin:
            return first_opcode, message


def _status(code: int, command: list[str]) -> dict:
    """The v4 error channel's Status, as the kubelet writes it."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    if code < 0:   # killed by a signal: the shell's convention
        code = 128 - code
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command {command}, "
                       f"exit code {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def _flag(query: dict, *names: str) -> bool:
    return any((query.get(n) or [""])[0].lower() in ("1", "true") for n in names)

