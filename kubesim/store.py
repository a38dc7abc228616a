"""The object store: kubesim's etcd plus the storage half of the apiserver's registry.

It keeps objects as JSON-like dicts, maintains metadata like the real server (uid, resourceVersion,
generation, creationTimestamp, deletionTimestamp with finalizers and pod grace periods), records a
bounded event history for watches, and persists to a state directory when asked to.
Objects handed out are copies; objects inside the store are never mutated in place.
"""
from __future__ import annotations

import json
import os
import queue
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from . import errors
from .resources import BY_KEY, NAMESPACES, PODS, ResourceType

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

# Top-level fields that are neither spec-like nor status: a change to them does not bump generation.
_NON_SPEC_FIELDS = ("apiVersion", "kind", "metadata", "status")
# Metadata fields the server owns; a client update cannot change them.
_SERVER_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                    "generation", "selfLink")


_stamps: dict[int, str] = {}


def now_rfc3339(offset_seconds: float = 0) -> str:
    """The current UTC time (plus an offset) at the API's one-second precision."""
    second = int(time.time() + offset_seconds)
    stamp = _stamps.get(second)
    if stamp is None:
        if len(_stamps) > 64:   # the clock moved on: drop the old seconds
            _stamps.clear()
        stamp = _stamps[second] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
    return stamp


def parse_rfc3339(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


_CONTAINERS = {dict, list}


def copy_json(value):
    """Deep copy of JSON-like data; several times faster than copy.deepcopy (scalars are not recursed into)."""
    kind = type(value)
    if kind is dict:
        return {k: (copy_json(v) if type(v) in _CONTAINERS else v) for k, v in value.items()}
    if kind is list:
        return [copy_json(v) if type(v) in _CONTAINERS else v for v in value]
    return value


def _spec_view(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in _NON_SPEC_FIELDS}


@dataclass
class Event:
    rv: int
    resource: ResourceType
    type: str
    object: dict          # shared, read-only
    old: dict | None      # the previous version, for MODIFIED and DELETED


class Watch:
    """A stream of events for one resource type (optionally one namespace); iterate with next()."""

    def __init__(self, store: "Store", resource: ResourceType, namespace: str | None):
        self._store = store
        self.resource = resource
        self.namespace = namespace
        self._queue: "queue.Queue[Event | None]" = queue.Queue()
        self.closed = False

    def matches(self, event: Event) -> bool:
        if event.resource.key != self.resource.key:
            return False
        return self.namespace is None or event.object["metadata"].get("namespace") == self.namespace

    def push(self, event: Event) -> None:
        self._queue.put(event)

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when the timeout passes or the watch is closed."""
        if self.closed:
            return None
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is None:
            self.closed = True
        return event

    def pending(self) -> bool:
        """Whether events are queued and not yet taken with next()."""
        return not self._queue.empty()

    def close(self) -> None:
        self._store._unwatch(self)
        self._queue.put(None)


Listener = Callable[[Event], None]


class Store:
    def __init__(self, state_dir: str | None = None, history_size: int = 50_000):
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in BY_KEY}
        self._rv = 0
        self._history: deque[Event] = deque(maxlen=history_size)
        self._watches: list[Watch] = []
        self._listeners: list[Listener] = []
        self._state_path = os.path.join(state_dir, "state.json") if state_dir else None
        self._dirty = False
        self._flusher: threading.Thread | None = None
        self._stopping = threading.Event()
        if self._state_path:
            os.makedirs(state_dir, exist_ok=True)
            self._load()
            self._flusher = threading.Thread(target=self._flush_loop, name="kubesim-store-flush", daemon=True)
            self._flusher.start()

    # ---- reads -------------------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        return self._rv

    def oldest_resource_version(self) -> int:
        """The oldest resourceVersion a watch may resume from without 410 Gone."""
        with self._lock:
            return self._history[0].rv - 1 if len(self._history) == self._history.maxlen else 0

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self._objects[rt.key].get((namespace or "", name))
        if obj is None:
            raise errors.not_found(rt.plural, name, rt.group)
        return copy_json(obj)

    def find(self, rt: ResourceType, namespace: str | None, name: str) -> dict | None:
        obj = self._objects[rt.key].get((namespace or "", name))
        return copy_json(obj) if obj is not None else None

    def snapshot(self, rt: ResourceType, namespace: str | None = None) -> tuple[list[dict], int]:
        """Shared, read-only objects (never mutate them) sorted by namespace/name, and the list's RV."""
        with self._lock:
            items = self._objects[rt.key]
            if namespace is None:
                objs = [items[k] for k in sorted(items)]
            else:
                objs = [items[k] for k in sorted(items) if k[0] == namespace]
            return objs, self._rv

    def list(self, rt: ResourceType, namespace: str | None = None) -> list[dict]:
        objs, _ = self.snapshot(rt, namespace)
        return [copy_json(o) for o in objs]

    # ---- writes ------------------------------------------------------------------------------------
    def create(self, rt: ResourceType, obj: dict, dry_run: bool = False, echo: bool = True,
               adopt: bool = False) -> dict | None:
        """Store a new object; returns a copy of it (None with echo=False: saves a deep copy per write).
        adopt=True stores ``obj`` itself, without a copy: for a controller that built it for this call and
        from then on only reads it, like any shared object of the cache."""
        obj = obj if adopt else copy_json(obj)
        meta = obj.setdefault("metadata", {})
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        with self._lock:
            if rt.namespaced:
                ns = meta.get("namespace") or "default"
                meta["namespace"] = ns
                namespace = self._objects[NAMESPACES.key].get(("", ns))
                if namespace is None:
                    raise errors.not_found("namespaces", ns)
                if namespace["metadata"].get("deletionTimestamp"):
                    raise errors.ApiError(403, "Forbidden",
                                          f'{rt.plural} "{meta.get("name") or meta.get("generateName")}" is '
                                          f'forbidden: unable to create new content in namespace {ns} '
                                          f'because it is being terminated')
            else:
                meta.pop("namespace", None)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise errors.invalid(rt.kind, "", [{"reason": "FieldValueRequired",
                                                        "message": "name or generateName is required",
                                                        "field": "metadata.name"}], rt.group)
                meta["name"] = self._generate_name(rt, meta.get("namespace", ""), meta["generateName"])
            key = (meta.get("namespace", ""), meta["name"])
            if key in self._objects[rt.key]:
                raise errors.already_exists(rt.plural, meta["name"], rt.group)
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "selfLink"):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if "spec" in obj or rt.key in ("apps/deployments", "apps/replicasets", "apps/statefulsets"):
                meta["generation"] = 1
            if rt is NAMESPACES:
                obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
                obj.setdefault("status", {})["phase"] = "Active"
            if dry_run:
                return obj
            self._commit(rt, key, obj, ADDED, None)
            return copy_json(obj) if echo else None

    def update(self, rt: ResourceType, obj: dict, subresource: str | None = None, dry_run: bool = False,
               allow_create: bool = False, echo: bool = True, adopt: bool = False) -> dict | None:
        """Replace an object; 409 Conflict when metadata.resourceVersion is set and stale.
        Returns a copy of the stored object, or None with echo=False (writers that do not read it back).
        adopt=True: the store may keep ``obj`` itself (see create)."""
        return self._update(rt, obj if adopt else copy_json(obj), subresource, dry_run, allow_create, echo)

    def _update(self, rt: ResourceType, obj: dict, subresource: str | None, dry_run: bool = False,
                allow_create: bool = False, echo: bool = True) -> dict | None:
        """update() for an object the store may keep as it is (a private copy)."""
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        with self._lock:
            ns = (meta.get("namespace") or "default") if rt.namespaced else ""
            key = (ns, name)
            old = self._objects[rt.key].get(key)
            if old is None:
                if allow_create and subresource is None:
                    return self.create(rt, obj, dry_run, echo)
                raise errors.not_found(rt.plural, name, rt.group)
            given_rv = meta.get("resourceVersion")
            if given_rv and given_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rt.plural, name, "the object has been modified; please apply your "
                                      "changes to the latest version and try again", rt.group)
            new = self._merge_update(rt, old, obj, subresource)
            if dry_run:
                return new
            stored = self._store_update(rt, key, old, new)
            return copy_json(stored) if echo else None

    def mutate(self, rt: ResourceType, namespace: str | None, name: str, fn: Callable[[dict], None],
               subresource: str | None = None, echo: bool = True,
               touches: tuple[str, ...] | None = None) -> dict | None:
        """Read-modify-write under the store lock (controllers use it; no conflicts possible).
        ``fn`` changes a private copy of the object: of all of it, or, to spare copying the rest, only of
        metadata and the top-level fields named in ``touches`` (by default just status for
        subresource="status"; touches=() when fn replaces whole top-level fields).
        Returns a copy of the stored object, or None with echo=False."""
        with self._lock:
            stored = self._objects[rt.key].get((namespace or "" if rt.namespaced else "", name))
            if stored is None:
                raise errors.not_found(rt.plural, name, rt.group)
            if subresource == "status" and touches is None:
                touches = ("status",)
            if touches is None:
                current = copy_json(stored)
            else:
                current = dict(stored, metadata=copy_json(stored["metadata"]))
                for field in touches:
                    if field in stored:
                        current[field] = copy_json(stored[field])
            fn(current)
            current["metadata"].pop("resourceVersion", None)
            return self._update(rt, current, subresource, echo=echo)   # current is already a private copy

    def delete(self, rt: ResourceType, namespace: str | None, name: str, grace_period: int | None = None,
               propagation: str | None = None, preconditions: dict | None = None,
               dry_run: bool = False, echo: bool = True) -> dict | None:
        """Delete like the apiserver: graceful for bound pods, deferred while finalizers remain.
        Returns a copy of the object as deleted (or as marked for deletion), or None with echo=False."""
        with self._lock:
            result = self._delete(rt, namespace, name, grace_period, propagation, preconditions, dry_run)
            return copy_json(result) if echo else None

    def _delete(self, rt, namespace, name, grace_period, propagation, preconditions, dry_run) -> dict:
        """delete() returning the object itself (shared when stored)."""
        key = (namespace or "" if rt.namespaced else "", name)
        old = self._objects[rt.key].get(key)
        if old is None:
            raise errors.not_found(rt.plural, name, rt.group)
        self._check_preconditions(rt, old, preconditions)
        new = dict(old, metadata=copy_json(old["metadata"]))   # deletion changes metadata only
        meta = new["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        elif propagation == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if rt is PODS:
            grace = self._pod_grace(old, grace_period)
            if meta.get("deletionTimestamp"):
                grace = min(grace, meta.get("deletionGracePeriodSeconds", grace))
            if grace > 0 and old.get("spec", {}).get("nodeName") and old.get("status", {}).get("phase") \
                    not in ("Succeeded", "Failed"):
                return self._mark_deleting(rt, key, old, new, finalizers, grace, dry_run)
        if rt is NAMESPACES:
            if not meta.get("deletionTimestamp"):
                new["status"] = dict(old.get("status") or {}, phase="Terminating")
                return self._mark_deleting(rt, key, old, new, finalizers, 0, dry_run)
            return old
        if finalizers:
            return self._mark_deleting(rt, key, old, new, finalizers, 0, dry_run)
        if dry_run:
            return new
        self._remove(rt, key, old)
        return old

    def remove(self, rt: ResourceType, namespace: str | None, name: str) -> dict | None:
        """Remove at once, whatever finalizers or grace remain (kubelet after termination, GC, namespaces)."""
        with self._lock:
            key = (namespace or "" if rt.namespaced else "", name)
            old = self._objects[rt.key].get(key)
            if old is not None:
                self._remove(rt, key, old)
            return old

    # ---- watching ----------------------------------------------------------------------------------
    def watch(self, rt: ResourceType, namespace: str | None = None, since_rv: int | None = None) -> Watch:
        """Events after since_rv (410 Gone when it is too old); without it, ADDED for every current object."""
        w = Watch(self, rt, namespace)
        with self._lock:
            if since_rv is None:
                objs, _ = self.snapshot(rt, namespace)
                for obj in objs:
                    w.push(Event(int(obj["metadata"]["resourceVersion"]), rt, ADDED, obj, None))
            else:
                if since_rv < self.oldest_resource_version():
                    raise errors.gone(f"too old resource version: {since_rv} ({self.oldest_resource_version()})")
                for event in self._history:
                    if event.rv > since_rv and w.matches(event):
                        w.push(event)
            self._watches.append(w)
        return w

    def _unwatch(self, w: Watch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)

    def add_listener(self, listener: Listener) -> None:
        """Called (under the store lock, so keep it to enqueueing) for every committed change."""
        with self._lock:
            self._listeners.append(listener)

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            for w in list(self._watches):
                w.close()
        if self._flusher:
            self._flusher.join(timeout=5)
            self._save()

    # ---- internals ---------------------------------------------------------------------------------
    def _generate_name(self, rt: ResourceType, ns: str, prefix: str) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        while True:
            name = prefix + "".join(secrets.choice(alphabet) for _ in range(5))
            if (ns, name) not in self._objects[rt.key]:
                return name

    @staticmethod
    def _pod_grace(pod: dict, grace_period: int | None) -> int:
        if grace_period is not None:
            return max(0, int(grace_period))
        return int(pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    @staticmethod
    def _check_preconditions(rt: ResourceType, old: dict, preconditions: dict | None) -> None:
        if not preconditions:
            return
        meta = old["metadata"]
        for field in ("uid", "resourceVersion"):
            want = preconditions.get(field)
            if want and want != meta.get(field):
                raise errors.conflict(rt.plural, meta["name"],
                                      f"Precondition failed: {field} in precondition: {want}, "
                                      f"{field} in object meta: {meta.get(field)}", rt.group)

    def _mark_deleting(self, rt, key, old, new, finalizers, grace, dry_run) -> dict:
        meta = new["metadata"]
        if finalizers:
            meta["finalizers"] = finalizers
        if not meta.get("deletionTimestamp") or grace < meta.get("deletionGracePeriodSeconds", grace + 1):
            meta["deletionTimestamp"] = now_rfc3339(grace)
            meta["deletionGracePeriodSeconds"] = grace
        if dry_run or new == old:
            return new
        return self._store_update(rt, key, old, new)

    @staticmethod
    def _merge_update(rt: ResourceType, old: dict, obj: dict, subresource: str | None) -> dict:
        old_meta = old["metadata"]
        if subresource == "status":
            # objects in the store are never mutated in place, so the new version may share old's parts
            new = dict(old, metadata=dict(old_meta))
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            if "managedFields" in obj["metadata"]:  # the API server records who wrote the status
                new["metadata"]["managedFields"] = obj["metadata"]["managedFields"]
            return new
        new = obj
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        meta = new["metadata"]
        for field in _SERVER_METADATA:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["namespace"] = old_meta.get("namespace")
        if not rt.namespaced:
            meta.pop("namespace", None)
        if "status" in rt.subresources or rt is NAMESPACES:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        if "generation" in old_meta and _spec_view(new) != _spec_view(old):
            meta["generation"] = old_meta["generation"] + 1
        return new

    def _store_update(self, rt: ResourceType, key, old: dict, new: dict) -> dict:
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and rt is not PODS \
                and rt is not NAMESPACES:
            self._remove(rt, key, old)
            return new
        if self._same_but_rv(old, new):
            return old  # a no-op write keeps its resourceVersion, as on the real server
        self._commit(rt, key, new, MODIFIED, old)
        return new

    @staticmethod
    def _same_but_rv(old: dict, new: dict) -> bool:
        a = dict(old, metadata={k: v for k, v in old["metadata"].items() if k != "resourceVersion"})
        b = dict(new, metadata={k: v for k, v in new["metadata"].items() if k != "resourceVersion"})
        return a == b

    def _remove(self, rt: ResourceType, key, old: dict) -> None:
        del self._objects[rt.key][key]
        self._rv += 1
        # objects in the store are never mutated, so the tombstone may share everything but its metadata
        gone = dict(old, metadata=dict(old["metadata"], resourceVersion=str(self._rv)))
        self._publish(Event(self._rv, rt, DELETED, gone, old))

    def _commit(self, rt: ResourceType, key, obj: dict, kind: str, old: dict | None) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[rt.key][key] = obj
        self._publish(Event(self._rv, rt, kind, obj, old))

    def _publish(self, event: Event) -> None:
        self._history.append(event)
        self._dirty = True
        for w in self._watches:
            if w.matches(event):
                w.push(event)
        for listener in self._listeners:
            listener(event)

    # ---- persistence -------------------------------------------------------------------------------
    def _load(self) -> None:
        if not os.path.exists(self._state_path):
            return
        with open(self._state_path) as f:
            state = json.load(f)
        self._rv = state["resourceVersion"]
        for rkey, items in state["objects"].items():
            if rkey in self._objects:
                for obj in items:
                    m = obj["metadata"]
                    self._objects[rkey][(m.get("namespace", ""), m["name"])] = obj

    def _save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            state = {"resourceVersion": self._rv,
                     "objects": {k: list(v.values()) for k, v in self._objects.items()}}
            self._dirty = False
            data = json.dumps(state)
        tmp = self._state_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, self._state_path)

    def _flush_loop(self) -> None:
        while not self._stopping.wait(0.5):
            self._save()


def iter_events(w: Watch, deadline: float | None = None) -> Iterable[Event]:
    """Events of a watch until the deadline (monotonic seconds) or until it closes."""
    while not w.closed:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if deadline is not None and timeout == 0:
            return
        event = w.next(timeout)
        if event is not None:
            yield event
