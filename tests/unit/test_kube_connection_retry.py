"""k8smove.kube.retry_connection_errors: an API server that restarts (refuses connections for seconds, or drops one
before answering) does not fail the step; the retries are bounded. A local HTTP server stands in for the API
server (only its connection behaviour matters here)."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes.client import ApiClient, Configuration
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from k8smove import kube


class _Api(BaseHTTPRequestHandler):
    """Answers every request with a JSON object naming its method; drops (no answer) the first ``drop`` ones."""
    seen: list[str]
    drop: int

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append(self.command)
        if len(self.seen) <= self.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)   # EOF before any answer: killed mid-request
            return
        body = json.dumps({"kind": "Status", "method": self.command}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_POST = _answer

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def api_server():
    """start(port, drop=0, after=0): the stand-in server on ``port`` after ``after`` seconds; yields its requests."""
    servers = []

    def start(port: int, drop: int = 0, after: float = 0.0) -> list[str]:
        seen: list[str] = []
        handler = type("Api", (_Api,), {"seen": seen, "drop": drop})

        def serve():
            time.sleep(after)
            server = ThreadingHTTPServer(("127.0.0.1", port), handler)
            servers.append(server)
            server.serve_forever()
        threading.Thread(target=serve, daemon=True).start()
        return seen
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _client(port: int, retrying: bool) -> ApiClient:
    configuration = Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    api = ApiClient(configuration=configuration)
    return kube.retry_connection_errors(api) if retrying else api


def test_a_refused_connection_is_retried_until_the_api_server_is_back(api_server):
    port = _free_port()
    with pytest.raises(MaxRetryError):   # urllib3's default: 3 retries at once, over before the server is back
        kube.call(_client(port, retrying=False), "GET", "/api/v1/namespaces/default")
    seen = api_server(port, after=2.0)
    started = time.monotonic()
    assert kube.call(_client(port, retrying=True), "GET", "/api/v1/namespaces/default")["method"] == "GET"
    assert time.monotonic() - started >= 1.5 and seen == ["GET"]


def test_a_patch_whose_answer_was_lost_is_sent_again_a_post_is_not(api_server):
    port = _free_port()
    seen = api_server(port, drop=1)
    time.sleep(0.2)
    api = _client(port, retrying=True)
    answer = kube.call(api, "PATCH", "/apis/apps/v1/namespaces/default/deployments/demo-app",
                       body={"spec": {"replicas": 0}}, content_type="application/merge-patch+json")
    assert answer["method"] == "PATCH" and seen == ["PATCH", "PATCH"]
    seen_post = api_server(port2 := _free_port(), drop=1)
    time.sleep(0.2)
    with pytest.raises(ProtocolError):
        kube.call(_client(port2, retrying=True), "POST", "/api/v1/namespaces/default/pods", body={"kind": "Pod"})
    assert seen_post == ["POST"]   # a create may have happened: its step's retry decides, not a blind resend


def test_the_retries_are_bounded():
    """Refused every time: the policy gives up after CONNECT_RETRIES, having paused 20-40 s in all."""
    retry, paused, attempts = kube.connection_retry(), 0.0, 1
    error = NewConnectionError(None, "Connection refused")
    with pytest.raises(MaxRetryError):
        while True:
            retry = retry.increment(method="GET", url="/api", error=error)
            paused += retry.get_backoff_time()
            attempts += 1
    assert attempts == kube.CONNECT_RETRIES + 1
    assert 20 <= paused <= 40, paused
