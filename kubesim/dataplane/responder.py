"""The HTTP responder the image table gives web-server and example images: answers every request on each port.

Run as ``python responder.py HOST:PORT...`` with POD_NAME, NODE_NAME and IMAGE in the environment;
stdlib only so it starts fast and needs no import path.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, with_body: bool) -> None:
        body = json.dumps({"pod": os.environ.get("POD_NAME"), "node": os.environ.get("NODE_NAME"),
                           "image": os.environ.get("IMAGE"), "path": self.path, "simulated": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, fmt: str, *args) -> None:
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()


def main(addresses: list[tuple[str, int]]) -> None:
    for address in addresses:
        server = ThreadingHTTPServer(address, Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print("responding on %s:%d" % address, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main([(host, int(port)) for host, port in (a.rsplit(":", 1) for a in sys.argv[1:])])
