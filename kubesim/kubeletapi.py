"""The kubelet API of a kubesim node on the real control plane: what kube-apiserver proxies `pods/log` and
`pods/exec` to (https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>).

* `GET /containerLogs/<ns>/<pod>/<container>` with `follow`, `tailLines`, `limitBytes`, `timestamps`,
  `sinceSeconds`, `sinceTime` and `previous`: the instance is chosen from the pod's status as the kubelet does,
  its CRI log file read like the kubelet's ReadLogs (kubesim/containerlogs.py);
* `/exec/<ns>/<pod>/<container>?command=…&input=1&output=1&error=1` over **WebSocket** (`v5.channel.k8s.io`,
  `v4.channel.k8s.io`): the node declares the `ExtendWebSocketsToKubelet` feature in its status, so a 1.36
  API server hands kubectl's and the Python client's WebSocket straight through instead of translating it to
  SPDY (a SPDY-only client gets a 400 here, which the API server relays). The command runs in the container's
  sandbox (ProcessRuntime.exec_launch); its exit code comes back as the v4 error-channel Status.
* `GET /healthz`.

TLS with a serving certificate for the node's IP from the cluster CA; a client must present a certificate of
that CA (kube-apiserver's `--kubelet-client-certificate`), as the real kubelet's x509 authentication asks.
Not served: attach, port-forward (SPDY tunnelled in WebSocket), /pods, /stats.
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

from .containerlogs import LogOptions, LogUnavailable, log_container_id, read_log, serve_log
from .runtime import instance_of

log = logging.getLogger("kubesim.kubeletapi")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


class KubeletApi:
    """One node's kubelet API on ``host`` (a free port); ``runtime``: its ProcessRuntime; ``pods(namespace, name)``:
    the pod as the kubelet last saw it (its cache), or None."""

    def __init__(self, node: str, host: str, runtime, pods, serving_cert, ca_file: str) -> None:
        self.node, self.runtime, self.pods = node, runtime, pods
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(serving_cert.cert, serving_cert.key)
        context.load_verify_locations(ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
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
            if len(parts) == 4 and parts[0] == "exec":
                supervisor = api.runtime.find_pod(parts[1], parts[2])
                if supervisor is None:
                    return self._reply(404, f'pod "{parts[2]}" not found on node {api.node}', "text/plain")
                if parts[3] not in supervisor.container_names():
                    return self._reply(404, f'container "{parts[3]}" not found in pod "{parts[2]}"', "text/plain")
                return self._exec(supervisor, parts[3], query)
            self._reply(404, "404 page not found", "text/plain")

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


def serve_exec(handler: BaseHTTPRequestHandler, supervisor, container: str, query: dict) -> int:
    """Upgrade ``handler``'s request to a WebSocket exec session in ``container`` and run it to the end; the HTTP
    status sent (101, or 400 with the reason). ``query``: parse_qs of the request (kubelet names input/output/
    error, or the API's stdin/stdout/stderr)."""
    def refuse(message: str) -> int:
        data = message.encode()
        handler.send_response(400)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return 400

    offered = [p.strip() for p in handler.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    protocol = next((p for p in PROTOCOLS if p in offered), None)
    if handler.headers.get("Upgrade", "").lower() != "websocket" or protocol is None:
        return refuse("kubesim serves exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only")
    command = query.get("command") or []
    if not command:
        return refuse("you must specify at least one command for the container")
    try:
        launch = supervisor.exec_launch(container, command)
    except LookupError as error:
        return refuse(str(error))
    accept = base64.b64encode(hashlib.sha1((handler.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept.decode())
    handler.send_header("Sec-WebSocket-Protocol", protocol)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True
    _ExecSession(handler.connection, handler.rfile, launch, command, stdin=_flag(query, "input", "stdin"),
                 v5=protocol.startswith("v5")).run()
    return 101


class _ExecSession:
    """One exec over an upgraded connection: stdin from channel 0, stdout/stderr to channels 1/2, the exit
    status as a Status on channel 3, then a close frame."""

    def __init__(self, sock, rfile, launch, command: list[str], stdin: bool, v5: bool) -> None:
        self.sock, self.rfile, self.command, self.v5 = sock, rfile, command, v5
        self._send_lock = threading.Lock()
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
        self._send(ERROR, json.dumps(_status(code, self.command)).encode())
        self._frame(0x8, struct.pack("!H", 1000))
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

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

    def _send(self, channel: int, data: bytes) -> None:
        self._frame(0x2, bytes([channel]) + data)

    def _frame(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        header = bytes([0x80 | opcode])
        if length < 126:
            header += bytes([length])
        elif length < 65536:
            header += bytes([126]) + struct.pack("!H", length)
        else:
            header += bytes([127]) + struct.pack("!Q", length)
        with self._send_lock:
            try:
                self.sock.sendall(header + payload)
            except OSError:
                pass


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

