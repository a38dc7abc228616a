"""The availability probe against a real local HTTP server that goes away for a while."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from k8smove import availability


class _App(BaseHTTPRequestHandler):
    rows: list[int] = []
    down_until = 0.0
    pod = "app-a"

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if time.monotonic() < _App.down_until:
            return self._answer(503, {"error": "down"})
        if self.path == "/rows":
            return self._answer(200, {"ids": list(_App.rows)})
        self._answer(200, {"pod": _App.pod, "node": "node1"})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if time.monotonic() < _App.down_until:
            return self._answer(503, {"error": "down"})
        _App.rows.append(len(_App.rows) + 1)
        self._answer(201, {"id": _App.rows[-1]})

    def log_message(self, *args):
        pass


def test_probe_counts_failures_gap_placements_and_acknowledged_rows():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    stop = threading.Event()
    record = availability.ProbeRecord()
    runner = threading.Thread(target=availability.run, args=(url, 40, 10, stop, record))
    try:
        runner.start()
        time.sleep(0.5)
        _App.down_until = time.monotonic() + 0.4   # an outage of 0.4 s
        time.sleep(0.6)
        _App.pod = "app-b"                           # a new pod answers
        time.sleep(0.5)
        stop.set()
        runner.join(timeout=5)
        summary = record.summary(time.monotonic())
        assert summary["sent"] >= 40
        assert 8 <= summary["failed"] <= summary["sent"] - 20
        assert summary["errors"] == {"HTTP 503": summary["failed"]}
        assert 350 <= summary["max_gap_ms"] <= 1000
        assert [p["pod"] for p in summary["placements"]] == ["app-a", "app-b"]
        acknowledged = summary["writes"]["acknowledged"]
        assert acknowledged and set(acknowledged) <= set(availability.rows_present(url))
        assert summary["writes"]["failed"] >= 2
        # the timeline puts every request in a bucket of its send time, the outage's failures together
        buckets, size = summary["timeline"]["buckets"], summary["timeline"]["bucket_s"]
        assert [sum(b[i] for b in buckets) for i in (1, 2, 3, 4)] == [
            summary["succeeded"], summary["failed"], len(acknowledged), summary["writes"]["failed"]]
        failed_at = [b[0] * size for b in buckets if b[2]]
        assert 0.25 <= min(failed_at) and max(failed_at) - min(failed_at) <= 0.75, buckets
        assert abs(summary["started_at"] - time.time() + summary["duration_s"]) < 1.0
    finally:
        server.shutdown()
