"""Recording core/v1 Events like client-go's recorder: identical events are aggregated into one object
whose count and lastTimestamp grow."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from .. import errors
from ..resources import EVENTS
from ..store import Store, now_rfc3339

_REMEMBERED = 4096   # like the upstream correlator's LRU size


class EventRecorder:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._names: OrderedDict[tuple, tuple[str, str]] = OrderedDict()

    def normal(self, obj: dict, reason: str, message: str, component: str, host: str | None = None,
               field_path: str | None = None) -> None:
        self.record(obj, "Normal", reason, message, component, host, field_path)

    def warning(self, obj: dict, reason: str, message: str, component: str, host: str | None = None,
                field_path: str | None = None) -> None:
        self.record(obj, "Warning", reason, message, component, host, field_path)

    def record(self, obj: dict, type_: str, reason: str, message: str, component: str,
               host: str | None = None, field_path: str | None = None) -> None:
        meta = obj["metadata"]
        involved = {"kind": obj.get("kind"), "namespace": meta.get("namespace"), "name": meta["name"],
                    "uid": meta.get("uid"), "apiVersion": obj.get("apiVersion"),
                    "resourceVersion": meta.get("resourceVersion")}
        if field_path:
            involved["fieldPath"] = field_path
        involved = {k: v for k, v in involved.items() if v}
        namespace = meta.get("namespace") or "default"
        key = (involved.get("kind"), namespace, meta["name"], meta.get("uid"), field_path, type_, reason,
               message, component, host)
        stamp = now_rfc3339()
        with self._lock:
            known = self._names.get(key)
            if known is not None:
                self._names.move_to_end(key)
        if known is not None and self._bump(known, stamp):
            return
        name = f"{meta['name']}.{time.time_ns():x}"
        source = {"component": component}
        if host:
            source["host"] = host
        event = {"metadata": {"name": name, "namespace": namespace}, "involvedObject": involved,
                 "reason": reason, "message": message, "source": source, "firstTimestamp": stamp,
                 "lastTimestamp": stamp, "count": 1, "type": type_, "eventTime": None,
                 "reportingComponent": component, "reportingInstance": host or ""}
        try:
            self._store.create(EVENTS, event, echo=False, adopt=True)
        except errors.ApiError:
            return  # namespace terminating or gone: upstream drops the event too
        with self._lock:
            self._names[key] = (namespace, name)
            if len(self._names) > _REMEMBERED:
                self._names.popitem(last=False)

    def _bump(self, where: tuple[str, str], stamp: str) -> bool:
        def bump(event: dict) -> None:
            event["count"] = event.get("count", 1) + 1
            event["lastTimestamp"] = stamp
        try:
            self._store.mutate(EVENTS, where[0], where[1], bump, echo=False, touches=())
            return True
        except errors.ApiError:
            return False
