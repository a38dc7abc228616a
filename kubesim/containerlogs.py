"""Container logs as a node keeps and serves them, shared by the kubelet API and kubesim's own API server.

* Writing: ``LOG_PUMP`` reads every container's stdout and stderr pipes (one thread for all) and appends CRI log
  lines to one file per container instance, as containerd does: ``<RFC3339Nano> stdout|stderr F|P <text>``, a
  line without its newline (at a 16 KiB cut or at the end of the stream) tagged P (partial).
* Reading: ``LogOptions`` (PodLogOptions from a query, validated like the API server's validatePodLogOptions),
  ``read_log`` (the kubelet's ReadLogs: tailLines, sinceSeconds/sinceTime, timestamps, limitBytes, follow while the
  container runs) and ``serve_log`` (a chunked HTTP response of it).
* Which instance: ``log_container_id`` ports the kubelet's validateContainerLogStatus (a running container's
  own, a terminated one's, the last terminated one's for ``previous`` or while waiting to restart), with its
  messages (``previous terminated container "c" in pod "p" not found``).
"""
from __future__ import annotations

import os
import re
import selectors
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .apiserver.watch import ChunkedBody

MAX_LINE_BYTES = 16 * 1024    # containerd's maximum line size: longer lines are cut into partial lines
FOLLOW_POLL_SECONDS = 0.2
DRAIN_SECONDS = 2.0           # how long an exit waits for the rest of the container's output
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


def timestamp(ns: int | None = None) -> bytes:
    """RFC3339 with nine fractional digits in UTC (the kubelet's RFC3339NanoFixed)."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z").encode()


def parse_time_ns(text: str) -> int:
    """An RFC3339 time (any fraction, any offset) in nanoseconds since the epoch; ValueError otherwise."""
    match = _RFC3339.match(text.strip())
    if not match:
        raise ValueError(f"{text} is not a valid (RFC3339) time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or ".", match.group(8)
    offset = 0 if zone in ("Z", "z") else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = int(datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()) - offset
    return seconds * 1_000_000_000 + int((fraction[1:] + "000000000")[:9])


# ---- writing ------------------------------------------------------------------------------------------------
class LogSink:
    """One container instance's log file, fed by its stdout and stderr pipes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = open(path, "ab")
        self.open_streams = 0
        self.drained = threading.Event()   # both pipes reached their end and the file is closed

    def write(self, stream: bytes, tag: bytes, text: bytes) -> None:
        self.file.write(b"%s %s %s %s\n" % (timestamp(), stream, tag, text))


class LogPump:
    """Copies container output into CRI log files; one thread, started with the first container."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._pending: list[tuple[int, bytes, LogSink]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def attach(self, stdout, stderr, path: str) -> LogSink:
        """Take over a started process's stdout and stderr pipes (file objects); their output goes to ``path``."""
        sink = LogSink(path)
        with self._lock:
            for pipe, stream in ((stdout, b"stdout"), (stderr, b"stderr")):
                fd = os.dup(pipe.fileno())   # ours to close at the end, whatever the Popen object does
                pipe.close()
                os.set_blocking(fd, False)
                sink.open_streams += 1
                self._pending.append((fd, stream, sink))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kubesim-log-pump", daemon=True)
                self._thread.start()
        os.write(self._wake_write, b"x")
        return sink

    def _run(self) -> None:
        buffers: dict[int, bytearray] = {}
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
            for fd, stream, sink in pending:
                buffers[fd] = bytearray()
                self._selector.register(fd, selectors.EVENT_READ, (stream, sink))
            for key, _ in self._selector.select():
                if key.data is None:
                    os.read(self._wake_read, 4096)
                    continue
                stream, sink = key.data
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                buffer = buffers[key.fd]
                buffer += chunk
                _write_lines(sink, stream, buffer, final=not chunk)
                if not chunk:
                    self._selector.unregister(key.fd)
                    os.close(key.fd)
                    del buffers[key.fd]
                    sink.open_streams -= 1
                sink.file.flush()
                if sink.open_streams == 0:
                    sink.file.close()
                    sink.drained.set()


def _write_lines(sink: LogSink, stream: bytes, buffer: bytearray, final: bool) -> None:
    """Write the buffer's complete lines (F), cut lines of MAX_LINE_BYTES and, at the end, the rest (P)."""
    while True:
        newline = buffer.find(b"\n", 0, MAX_LINE_BYTES + 1)
        if newline >= 0:
            sink.write(stream, b"F", bytes(buffer[:newline]))
            del buffer[:newline + 1]
        elif len(buffer) >= MAX_LINE_BYTES or (final and buffer):
            cut = min(len(buffer), MAX_LINE_BYTES)
            sink.write(stream, b"P", bytes(buffer[:cut]))
            del buffer[:cut]
        else:
            return


LOG_PUMP = LogPump()


# ---- which instance ----------------------------------------------------------------------------------------
class LogUnavailable(Exception):
    """The kubelet's answer when a container has no log to show (the API server relays it as a 400)."""


def log_container_id(pod: dict, container: str, previous: bool) -> str:
    """The containerID whose log a request reads, from the pod's status (the kubelet's validateContainerLogStatus)."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    statuses = (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])
    current = next((cs for cs in statuses if cs.get("name") == container), None)
    if current is None:
        raise LogUnavailable(f'container "{container}" in pod "{name}" is not available')
    last = (current.get("lastState") or {}).get("terminated") or {}
    state = current.get("state") or {}
    if previous:
        if not last.get("containerID"):
            raise LogUnavailable(f'previous terminated container "{container}" in pod "{name}" not found')
        return last["containerID"]
    if "running" in state:
        return current.get("containerID") or ""
    if "terminated" in state or last:
        container_id = state.get("terminated", {}).get("containerID") or last.get("containerID")
        if not container_id:
            raise LogUnavailable(f'container "{container}" in pod "{name}" is terminated')
        return container_id
    if "waiting" in state:
        reason = state["waiting"].get("reason") or ""
        reason = {"ErrImagePull": "image can't be pulled",
                  "ImagePullBackOff": "trying and failing to pull image"}.get(reason, reason)
        raise LogUnavailable(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
    raise LogUnavailable(f'container "{container}" in pod "{name}" is waiting to start - no logs yet')


# ---- reading ------------------------------------------------------------------------------------------------
@dataclass
class LogOptions:
    """PodLogOptions as the kubelet uses them."""
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail: int | None = None
    limit: int | None = None
    since_ns: int = 0

    @classmethod
    def from_query(cls, query: dict) -> "LogOptions":
        """``query``: name -> value (a string, or the list parse_qs gives). ValueError: a message naming the field
        as the API server's validatePodLogOptions does."""
        def value(name: str) -> str | None:
            raw = query.get(name)
            return raw[0] if isinstance(raw, list) else raw

        def integer(name: str) -> int | None:
            raw = value(name)
            if raw in (None, ""):
                return None
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}: Invalid value: {raw!r}: must be an integer") from None

        def flag(name: str) -> bool:
            return (value(name) or "").lower() in ("1", "true")

        tail, limit, since_seconds = integer("tailLines"), integer("limitBytes"), integer("sinceSeconds")
        since_time = value("sinceTime") or None
        problems = []
        if tail is not None and tail < 0:
            problems.append(f"tailLines: Invalid value: {tail}: must be greater than or equal to 0")
        if limit is not None and limit < 1:
            problems.append(f"limitBytes: Invalid value: {limit}: must be greater than 0")
        if since_seconds is not None and since_time is not None:
            problems.append("Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified")
        elif since_seconds is not None and since_seconds < 1:
            problems.append(f"sinceSeconds: Invalid value: {since_seconds}: must be greater than 0")
        if problems:
            raise ValueError(", ".join(problems))
        since_ns = 0
        if since_seconds is not None:
            since_ns = time.time_ns() - since_seconds * 1_000_000_000
        if since_time is not None:
            since_ns = max(since_ns, parse_time_ns(since_time))
        return cls(flag("follow"), flag("previous"), flag("timestamps"), tail, limit, since_ns)


def read_log(path: str | None, options: LogOptions, running=lambda: False):
    """The log's lines as ``options`` select them (bytes, one yield per line); with follow, new lines while
    ``running()`` says the container still runs."""
    try:
        f = open(path, "rb") if path else None
    except FileNotFoundError:
        f = None
    if f is None:
        return
    with f:
        if options.tail is not None:
            f.seek(_tail_start(f, options.tail))
        since = timestamp(options.since_ns) if options.since_ns else b""
        remaining = options.limit
        lines_left = options.tail if options.tail is not None and not options.follow else None
        for stamp, _, text in _entries(f, options.follow, running):
            if lines_left == 0:
                return
            if since and stamp < since:
                continue
            if options.timestamps:
                text = stamp + b" " + text
            if remaining is not None:
                text = text[:remaining]
                remaining -= len(text)
            yield text
            if remaining == 0:
                return
            if lines_left is not None:
                lines_left -= 1


def follow_output(path: str, running):
    """A container's output from now on, (b"stdout" or b"stderr", text) while ``running()`` (kubectl attach).
    "Now" is this call, not the first read: what the container answers to an attach's stdin is not lost."""
    f = open(path, "rb")
    f.seek(0, os.SEEK_END)

    def output():
        with f:
            for _, stream, text in _entries(f, True, running):
                yield stream, text
    return output()


def _entries(f, follow: bool, running):
    """The CRI lines from the file's position on: (timestamp, stream, text); with follow, new ones until
    ``running()`` turns false, then what is left."""
    while True:
        line = f.readline()
        if not line.endswith(b"\n"):
            if not follow:
                return
            f.seek(-len(line), os.SEEK_CUR)   # read an incomplete line again once it is complete
            follow = running()   # once the container stopped: drain what is there, then end
            if follow:
                time.sleep(FOLLOW_POLL_SECONDS)
            continue
        parsed = _parse_cri(line)
        if parsed is not None:
            yield parsed


def _tail_start(f, lines: int) -> int:
    """The offset of the last ``lines`` complete lines (the kubelet's tail.FindTailLineStartIndex)."""
    data = f.read()
    f.seek(0)
    if lines == 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    start = end
    for _ in range(lines):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            return 0
    return start + 1


def _parse_cri(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(timestamp, stream, text) of a CRI log line; a partial line's text loses its newline."""
    parts = line.split(b" ", 3)
    if len(parts) < 4 or parts[1] not in (b"stdout", b"stderr"):
        return None
    text = parts[3]
    if parts[2].split(b":")[0] == b"P":
        text = text[:-1]
    return parts[0], parts[1], text


def serve_log(handler, lines) -> None:
    """Send ``lines`` (read_log's) as a chunked text/plain 200 response on a BaseHTTPRequestHandler."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    body = ChunkedBody(handler.wfile)
    try:
        for text in lines:
            body.send(text)
        body.end()
    except OSError:   # the client went away
        handler.close_connection = True
