"""Availability and data proof during a move: a fixed-rate HTTP probe and a row writer.

Runs as the container of a probe Pod (k8smove.probe_pod: ``python3 -c <this file>``, so standard library only)
started by the migration's setup task and stopped by its teardown, so it keeps measuring while the move's tasks
run or defer on whichever workers, and it exits by itself after ``--max-seconds`` so it can never leave a run
hanging. It speaks JSON lines on stdout: ``{"k8smove_probe": "started"}`` once it probes, and
``{"k8smove_probe": "summary", "summary": {...}}`` when it stops.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

REQUEST_TIMEOUT_SECONDS = 2.0
# A write is answered once committed, and the demo App retries a lost DB for up to 20 s: waiting longer than that
# measures how long writes stall instead of counting them failed at 2 s.
WRITE_TIMEOUT_SECONDS = 25.0


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class ProbeRecord:
    """What the readers and writers saw; every mutation happens under ``lock``."""
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)                # the same moment, as wall-clock time
    sent: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    successes: list[tuple[float, float]] = field(default_factory=list)   # (sent at, answered at)
    errors: dict[str, int] = field(default_factory=dict)
    failed_at: list[float] = field(default_factory=list)                # when each failed read was sent
    placements: list[dict] = field(default_factory=list)               # each change of answering pod
    writes_sent: int = 0
    writes_failed: int = 0
    write_errors: dict[str, int] = field(default_factory=dict)
    acknowledged: list[int] = field(default_factory=list)
    write_acks: list[tuple[float, float]] = field(default_factory=list)  # (sent at, acknowledged at)
    write_failed_at: list[float] = field(default_factory=list)
    write_rate_used: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def max_gap_ms(self, until: float, answers=None) -> float:
        """Longest time with no successful answer (``answers``: (sent, done) pairs; the reads' by default): from
        start, between answers, and up to ``until``."""
        answered = sorted(done for _, done in (self.successes if answers is None else answers))
        edges = [self.started, *answered, until]
        return round(max(b - a for a, b in zip(edges, edges[1:])) * 1000, 1)

    def timeline(self, until: float) -> dict:
        """Reads answered/failed and writes acknowledged/failed per bucket of send time (at most ~600 buckets):
        [[bucket index, reads ok, reads failed, writes ok, writes failed], ...], empty buckets left out."""
        size = max(0.25, round((until - self.started) / 600, 2))
        buckets: dict[int, list[int]] = {}
        for column, times in ((1, [sent for sent, _ in self.successes]), (2, self.failed_at),
                              (3, [sent for sent, _ in self.write_acks]), (4, self.write_failed_at)):
            for sent in times:
                buckets.setdefault(int((sent - self.started) / size), [0, 0, 0, 0])[column - 1] += 1
        return {"bucket_s": size, "buckets": [[index, *counts] for index, counts in sorted(buckets.items())]}

    def summary(self, until: float) -> dict:
        with self.lock:
            lat = sorted(self.latencies_ms)
            write_lat = sorted(round((done - sent) * 1000, 2) for sent, done in self.write_acks)
            return {
                "sent": self.sent, "failed": self.failed, "succeeded": self.sent - self.failed,
                "max_gap_ms": self.max_gap_ms(until),
                "latency_ms": {"p50": _percentile(lat, 0.50), "p95": _percentile(lat, 0.95),
                               "p99": _percentile(lat, 0.99), "max": lat[-1] if lat else None},
                "errors": dict(self.errors), "placements": list(self.placements),
                "duration_s": round(until - self.started, 3), "started_at": round(self.started_at, 3),
                "timeline": self.timeline(until),
                "writes": {"sent": self.writes_sent, "failed": self.writes_failed, "errors": dict(self.write_errors),
                           "acknowledged": sorted(self.acknowledged),
                           # the longest time no write was acknowledged: a DB outage the App's retries hide
                           "max_stall_ms": self.max_gap_ms(until, self.write_acks) if self.write_rate_used else None,
                           "latency_ms": {"p50": _percentile(write_lat, 0.50), "p95": _percentile(write_lat, 0.95),
                                          "p99": _percentile(write_lat, 0.99),
                                          "max": write_lat[-1] if write_lat else None}},
            }


def _request(url: str, data: bytes | None = None, timeout: float = REQUEST_TIMEOUT_SECONDS) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def _error_name(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, Exception) else exc
    return type(exc).__name__


def _read_once(url: str, record: ProbeRecord) -> None:
    sent_at = time.monotonic()
    try:
        status, body = _request(url)
        ok, error = 200 <= status < 300, f"HTTP {status}"
    except Exception as exc:  # every failure mode counts as a failed request, named in the report
        ok, error, body = False, _error_name(exc), b""
    done = time.monotonic()
    with record.lock:
        record.sent += 1
        if not ok:
            record.failed += 1
            record.failed_at.append(sent_at)
            record.errors[error] = record.errors.get(error, 0) + 1
            return
        record.latencies_ms.append(round((done - sent_at) * 1000, 2))
        record.successes.append((sent_at, done))
        try:
            answer = json.loads(body)
            where = {"pod": answer.get("pod"), "node": answer.get("node")}
        except (ValueError, AttributeError):
            return
        if not record.placements or {k: record.placements[-1][k] for k in where} != where:
            record.placements.append({**where, "at_s": round(done - record.started, 3)})


def _write_once(url: str, seq: int, record: ProbeRecord) -> None:
    sent_at, error = time.monotonic(), None
    try:
        status, body = _request(url, json.dumps({"value": f"probe-{seq}"}).encode(), WRITE_TIMEOUT_SECONDS)
        row_id = json.loads(body).get("id") if 200 <= status < 300 else None
        error = None if row_id is not None else f"HTTP {status}"
    except Exception as exc:  # an unacknowledged write is simply not counted as acknowledged
        row_id, error = None, _error_name(exc)
    done = time.monotonic()
    with record.lock:
        record.writes_sent += 1
        if row_id is None:
            record.writes_failed += 1
            record.write_failed_at.append(sent_at)
            record.write_errors[error] = record.write_errors.get(error, 0) + 1
        else:
            record.acknowledged.append(int(row_id))
            record.write_acks.append((sent_at, done))


def _at_fixed_rate(rate: float, stop: threading.Event, pool: ThreadPoolExecutor, call) -> None:
    """Fire call(seq) at a fixed rate, whatever each call's latency (a slow answer must not slow the probe)."""
    interval, seq, start = 1.0 / rate, 0, time.monotonic()
    while not stop.is_set():
        pool.submit(call, seq)
        seq += 1
        stop.wait(max(0.0, start + seq * interval - time.monotonic()))


def run(base_url: str, rate: float, write_rate: float, stop: threading.Event,
        record: ProbeRecord | None = None) -> ProbeRecord:
    """Probe ``base_url`` (GET /) at ``rate``/s and write rows (POST /rows) at ``write_rate``/s until stop."""
    record = record or ProbeRecord()
    record.write_rate_used = write_rate > 0
    base_url = base_url.rstrip("/")
    with ThreadPoolExecutor(max_workers=int(rate * REQUEST_TIMEOUT_SECONDS + write_rate * WRITE_TIMEOUT_SECONDS)
                            + 8) as pool:
        calls = [(rate, lambda seq: _read_once(base_url + "/", record))]
        if write_rate > 0:
            calls.append((write_rate, lambda seq: _write_once(base_url + "/rows", seq, record)))
        loops = [threading.Thread(target=_at_fixed_rate, args=(r, stop, pool, call), daemon=True)
                 for r, call in calls]
        for t in loops:
            t.start()
        for t in loops:
            t.join()
    return record


def rows_present(base_url: str, deadline_seconds: float = 60.0) -> list[int]:
    """Ids of every row the app can read back (GET /rows), retried with backoff within ``deadline_seconds``:
    right after a move the app may still be reconnecting to its DB, which is not a lost row."""
    deadline, delay = time.monotonic() + deadline_seconds, 0.2
    while True:
        try:
            status, body = _request(base_url.rstrip("/") + "/rows")
            if status == 200:
                return [int(i) for i in json.loads(body)["ids"]]
            problem = f"HTTP {status}"
        except (OSError, ValueError) as exc:     # refused, reset, timed out, or a 503 while the DB is away
            problem = _error_name(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"GET {base_url.rstrip('/')}/rows did not answer within {deadline_seconds} s "
                               f"(last: {problem}): the rows cannot be checked")
        time.sleep(min(delay, remaining))   # backoff of a bounded retry
        delay = min(delay * 2, 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--write-rate", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    stop, stopped_by = threading.Event(), []

    def stop_because(why: str) -> None:
        stopped_by.append(why)
        stop.set()
    signal.signal(signal.SIGTERM, lambda *_: stop_because("signal"))
    signal.signal(signal.SIGINT, lambda *_: stop_because("signal"))
    threading.Timer(args.max_seconds, stop_because, args=("max-seconds",)).start()
    record = ProbeRecord()
    print(json.dumps({"k8smove_probe": "started", "url": args.url}), flush=True)
    run(args.url, args.rate, args.write_rate, stop, record)
    result = record.summary(time.monotonic())
    result["stopped_by"] = stopped_by[0]
    sys.stdout.write(json.dumps({"k8smove_probe": "summary", "summary": result}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the max-seconds timer thread must not keep the process alive


if __name__ == "__main__":
    raise SystemExit(main())
