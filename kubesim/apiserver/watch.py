"""Watch streams: newline-delimited JSON events over chunked HTTP/1.1, with selector filtering
(objects leaving the selection arrive as DELETED), BOOKMARK events and 410 Gone as an ERROR event."""
from __future__ import annotations

import json
import select
import socket
import time
from typing import Callable

from .. import errors
from ..store import ADDED, DELETED, MODIFIED, Store
from ..resources import ResourceType
from .routing import truthy

BOOKMARK_SECONDS = 5.0
POLL_SECONDS = 1.0          # how often an idle watch checks for a closed client or a stopping server
DEFAULT_TIMEOUT = 1800.0


def write_chunk(wfile, data: bytes) -> None:
    wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    wfile.flush()


class ChunkedBody:
    """A chunked response body of at most ``limit`` bytes (a log's limitBytes; None: no limit)."""

    def __init__(self, wfile, limit: int | None = None) -> None:
        self.wfile, self.limit, self.sent = wfile, limit, 0

    def send(self, data: bytes) -> bool:
        """Write what the limit still allows; whether more may follow."""
        if self.limit is not None:
            data = data[:self.limit - self.sent]
        if data:
            write_chunk(self.wfile, data)
            self.sent += len(data)
        return self.limit is None or self.sent < self.limit

    def end(self) -> None:
        write_chunk(self.wfile, b"")


def client_gone(connection: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _synced_resource_version(store: Store, watch=None) -> int | None:
    """The store's resourceVersion once every event up to it reached this watch; None while some wait."""
    with store._lock:  # under the store lock every committed event has been queued to every watch
        return None if watch is not None and watch.pending() else store.resource_version


def _filtered(event_type: str, obj: dict, old: dict | None, matches) -> str | None:
    """The event type a selecting watcher sees, None when it sees nothing (upstream's filterWithAttrs)."""
    if matches is None:
        return event_type
    now = matches(obj)
    if event_type == MODIFIED:
        before = matches(old) if old is not None else now
        return MODIFIED if now and before else ADDED if now else DELETED if before else None
    if event_type == DELETED:
        return DELETED if now or (old is not None and matches(old)) else None
    return event_type if now else None


class WatchStream:
    def __init__(self, store: Store, rt: ResourceType, namespace: str | None, query: dict,
                 matches, encode: Callable[[dict], bytes], register: Callable, unregister: Callable):
        self.store, self.rt, self.namespace = store, rt, namespace
        self.matches, self.encode = matches, encode
        self.register, self.unregister = register, unregister
        rv = query.get("resourceVersion") or ""
        if rv not in ("", "0") and not rv.isdigit():
            raise errors.bad_request(f'invalid resource version: "{rv}"')
        self.since = int(rv) if rv not in ("", "0") else None
        if truthy(query.get("sendInitialEvents")):
            self.since = None
        self.initial_events_end = truthy(query.get("sendInitialEvents"))
        self.bookmarks = truthy(query.get("allowWatchBookmarks"))
        self.bookmark_seconds = BOOKMARK_SECONDS
        try:
            self.timeout = float(query.get("timeoutSeconds") or DEFAULT_TIMEOUT)
        except ValueError:
            raise errors.bad_request(f'invalid timeoutSeconds: "{query.get("timeoutSeconds")}"')

    def _line(self, event_type: str, obj_bytes: bytes) -> bytes:
        return b'{"type":"%s","object":%s}\n' % (event_type.encode(), obj_bytes)

    def _bookmark(self, rv: int, initial_end: bool = False) -> bytes:
        meta = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return self._line("BOOKMARK", json.dumps({"kind": self.rt.kind, "apiVersion": self.rt.api_version,
                                                  "metadata": meta}).encode())

    def serve(self, handler) -> None:
        """Send the response headers and stream until timeout, client close or server stop."""
        start_rv = _synced_resource_version(self.store)
        watch = None
        error = None
        try:
            watch = self.store.watch(self.rt, self.namespace, self.since)
        except errors.ApiError as e:
            error = e
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Cache-Control", "no-cache, private")
        handler.end_headers()
        if error is not None:
            write_chunk(handler.wfile, self._line("ERROR", json.dumps(error.status()).encode()))
            write_chunk(handler.wfile, b"")
            return
        self.register(watch)
        try:
            self._pump(handler, watch, start_rv)
            write_chunk(handler.wfile, b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True
        finally:
            self.unregister(watch)
            watch.close()

    def _pump(self, handler, watch, start_rv: int) -> None:
        deadline = time.monotonic() + self.timeout
        next_bookmark = time.monotonic() + self.bookmark_seconds
        initial_pending = self.initial_events_end and self.since is None
        while not watch.closed:
            now = time.monotonic()
            if now >= deadline:
                return
            if initial_pending and not watch.pending():
                write_chunk(handler.wfile, self._bookmark(start_rv, initial_end=True))
                initial_pending = False
            wait = min(POLL_SECONDS, deadline - now, next_bookmark - now if self.bookmarks else POLL_SECONDS)
            event = watch.next(max(wait, 0.001))
            if event is None:
                if watch.closed or client_gone(handler.connection):
                    return
                synced = _synced_resource_version(self.store, watch)
                if self.bookmarks and time.monotonic() >= next_bookmark and synced is not None:
                    write_chunk(handler.wfile, self._bookmark(synced))
                    next_bookmark = time.monotonic() + self.bookmark_seconds
                continue
            event_type = _filtered(event.type, event.object, event.old, self.matches)
            if event_type is not None:
                write_chunk(handler.wfile, self._line(event_type, self.encode(event.object)))
