"""HTTP server of the demo App.

GET /         {"pod", "node", "rows"} (rows: how many were stored at the last count, taken in the background
              every COUNT_SECONDS; null while the DB is unreachable) — never waits for the DB
GET /healthz  200 whenever the process serves HTTP; the readiness probe's target
POST /rows    {"value": ...} -> {"id"}: answered only after the INSERT has committed
GET /rows     {"ids": [...]}

Readiness deliberately ignores the DB: when the DB pod moves (Recreate: stopped, then started on the
target), a DB-dependent readiness would take every App pod out of the Service at once, turning a short DB
pause into "connection refused" for every request, and a surge rollout of the App could not finish while
the DB is away. Instead the App stays Ready, DB requests wait for the DB (reconnecting) up to
DB_WAIT_SECONDS and then answer 503, and GET / and /healthz keep answering throughout.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

DB_WAIT_SECONDS = float(os.environ.get("DB_WAIT_SECONDS", "20"))
RETRY_DELAY_SECONDS = 0.2
SCHEMA_LOCK_KEY = 7_400_112   # any constant: the advisory lock the schema's creation holds
# After SIGTERM the app keeps accepting this long: proxies that had not yet seen the pod leave its endpoints
# may still send a connection or two (the "lame duck" period a preStop sleep gives on real clusters); 0.5 s was
# too short while ten releases rolled out at once (connections reset by an old pod that had stopped).
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "2.0"))


def db_address() -> tuple[str, int]:
    """DB_HOST/DB_PORT, preferring the <SERVICE>_SERVICE_HOST/_PORT variables Kubernetes injects for a
    Service named DB_HOST (they work without cluster DNS)."""
    host = os.environ.get("DB_HOST", "localhost")
    prefix = host.upper().replace("-", "_")
    return (os.environ.get(f"{prefix}_SERVICE_HOST", host),
            int(os.environ.get(f"{prefix}_SERVICE_PORT", os.environ.get("DB_PORT", "5432"))))


class Database:
    """A connection per handler thread (no request waits behind another); reconnects after the DB restarts
    or moves."""

    def __init__(self):
        self._local = threading.local()
        self._schema_ready = False

    def _connect(self):
        host, port = db_address()
        conn = psycopg2.connect(host=host, port=port, dbname=os.environ.get("DB_NAME", "demo"),
                                user=os.environ.get("DB_USER", "demo"),
                                password=os.environ.get("DB_PASSWORD", ""), connect_timeout=3)
        if not self._schema_ready:
            with conn.cursor() as cur:
                # IF NOT EXISTS is not safe against a concurrent CREATE (a unique violation in the catalog): the
                # first connections of every thread and pod take turns
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                cur.execute("CREATE TABLE IF NOT EXISTS rows (id SERIAL PRIMARY KEY, value TEXT, "
                            "created TIMESTAMPTZ DEFAULT now())")
            conn.commit()
            self._schema_ready = True
        return conn

    def run(self, statement: str, args=(), wait: float = DB_WAIT_SECONDS):
        """Execute and commit; on a lost connection reconnect and retry until ``wait`` seconds have passed."""
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = getattr(self._local, "conn", None)
                if conn is None or conn.closed:
                    conn = self._local.conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute(statement, args)
                    result = cur.fetchall() if cur.description else None
                conn.commit()
                return result
            except psycopg2.OperationalError:
                # An INSERT whose COMMIT was lost was never acknowledged, so retrying it cannot make a
                # client believe in a row that does not exist.
                self._close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_DELAY_SECONDS)

    def _close(self):
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass


DB = Database()
COUNT_SECONDS = 0.5
ROW_COUNT = {"rows": None}


def count_rows_forever() -> None:
    """Keep ROW_COUNT fresh off the request path: a DB that is moving (or slow to accept connections under
    load) must not make GET / wait, or time out, for a figure it only reports."""
    while True:
        try:
            ROW_COUNT["rows"] = DB.run("SELECT count(*) FROM rows", wait=0)[0][0]
        except psycopg2.Error:
            ROW_COUNT["rows"] = None
        time.sleep(COUNT_SECONDS)


IDENTITY = {"pod": os.environ.get("POD_NAME", socket.gethostname()), "node": os.environ.get("NODE_NAME", "")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _db(self, statement: str, args=(), wait: float = DB_WAIT_SECONDS):
        try:
            return DB.run(statement, args, wait)
        except psycopg2.Error as err:
            self._answer(503, {**IDENTITY, "error": f"database unavailable: {err}".strip()})
            return None

    def do_GET(self):
        if self.path == "/healthz":
            return self._answer(200, {"status": "ok", **IDENTITY})
        if self.path == "/rows":
            if (rows := self._db("SELECT id FROM rows ORDER BY id")) is not None:
                self._answer(200, {"ids": [row[0] for row in rows]})
            return
        if self.path == "/":
            return self._answer(200, {**IDENTITY, "rows": ROW_COUNT["rows"]})
        self._answer(404, {"error": f"no route {self.path}"})

    def do_POST(self):
        if self.path != "/rows":
            return self._answer(404, {"error": f"no route {self.path}"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            value = json.loads(self.rfile.read(length) or b"{}")["value"]
        except (ValueError, KeyError, TypeError):
            return self._answer(400, {"error": 'body must be {"value": ...}'})
        if (rows := self._db("INSERT INTO rows (value) VALUES (%s) RETURNING id", (json.dumps(value),))) is not None:
            self._answer(201, {"id": rows[0][0], **IDENTITY})

    def log_message(self, format, *args):
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    address = (os.environ.get("POD_IP") or "0.0.0.0", int(os.environ.get("PORT", "8080")))
    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = False   # server_close() then waits for requests in flight instead of cutting them off

    def drain_then_stop() -> None:
        time.sleep(DRAIN_SECONDS)
        server.shutdown()
    # SIGTERM: serve the drain period, stop accepting, let requests in flight finish, exit.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=drain_then_stop, daemon=True).start())
    threading.Thread(target=count_rows_forever, daemon=True).start()
    print(f"demo app {IDENTITY} listening on {address[0]}:{address[1]}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
