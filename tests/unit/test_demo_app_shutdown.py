"""The demo app's SIGTERM handling, on the real process: it keeps answering through its drain period and
finishes a request in flight instead of cutting the connection (what a client then sees as RemoteDisconnected)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str = "GET", path: str = "/", body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


@pytest.fixture
def app():
    port = free_port()
    env = dict(os.environ, POD_IP="127.0.0.1", PORT=str(port), DRAIN_SECONDS="1.0", DB_WAIT_SECONDS="1.5",
               DB_HOST="127.0.0.1", DB_PORT=str(free_port()))   # no DB there: writes wait, then answer 503
    process = subprocess.Popen([sys.executable, "-m", "include.demo_app"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            request(port)
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("the demo app did not start")
            time.sleep(0.05)
    yield process, port
    process.kill()
    process.wait()


def test_sigterm_drains_then_exits_without_cutting_requests(app):
    process, port = app
    in_flight: dict = {}
    writer = threading.Thread(target=lambda: in_flight.update(answer=request(port, "POST", "/rows", {"value": 1})))
    writer.start()
    time.sleep(0.2)   # the write is waiting for the (absent) DB
    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert request(port)[0] == 200   # a connection during the drain period is still served
    writer.join(timeout=10)
    assert in_flight["answer"][0] == 503, in_flight   # answered, not disconnected
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - stopped >= 1.0   # not before the drain period ended
