"""The controllers' shared informer cache: every object by namespace, pods by node, dependents by owner uid,
and a label index, kept current by one store listener so no controller scans all pods per event."""
from __future__ import annotations

import threading
from collections import defaultdict

from .. import labels as labelsel
from ..resources import PODS, RESOURCE_TYPES, SERVICES, ResourceType
from ..store import DELETED, Event, Store
from .base import log


class Cache:
    def __init__(self, store: Store, resource_types: tuple[ResourceType, ...] = RESOURCE_TYPES) -> None:
        """resource_types: what to fill from the store (a kubelet on the real API server sees only its pods,
        its Node and the Services; the rest stays empty)."""
        self._lock = threading.Lock()
        self._by_ns: dict[str, dict[str, dict[str, dict]]] = {r.key: defaultdict(dict) for r in RESOURCE_TYPES}
        self._pods_by_node: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
        self._by_owner: dict[str, dict[tuple[str, str, str], dict]] = defaultdict(dict)
        self._label_index: dict[tuple[str, str], dict[tuple[str, str], set[str]]] = defaultdict(
            lambda: defaultdict(set))   # (rt key, ns) -> (label, value) -> names
        self._services_by_selector: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # (ns, key, value)
        self._touched: set[tuple[str, str, str]] = set()
        self._filling = True
        store.add_listener(self._on_event)
        for rt in resource_types:
            objs, _ = store.snapshot(rt)
            with self._lock:
                for obj in objs:
                    if (rt.key, *_key(obj)) not in self._touched:
                        self._put(rt, obj)
        with self._lock:
            self._filling = False
            self._touched.clear()

    # ---- maintenance (under the store lock) -------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        rt = event.resource
        with self._lock:
            if self._filling:
                self._touched.add((rt.key, *_key(event.object)))
            try:
                if event.old is not None:
                    self._drop(rt, event.old)
                if event.type != DELETED:
                    self._put(rt, event.object)
            except TypeError:   # unhashable label values from a malformed object: keep serving the write
                log.exception("cache: cannot index %s %s", rt.key, _key(event.object))

    def _put(self, rt: ResourceType, obj: dict) -> None:
        ns, name = _key(obj)
        old = self._by_ns[rt.key][ns].get(name)
        if old is not None:
            self._drop(rt, old)
        self._by_ns[rt.key][ns][name] = obj
        for ref in obj["metadata"].get("ownerReferences") or ():
            self._by_owner[ref["uid"]][(rt.key, ns, name)] = obj
        if rt is PODS and obj.get("spec", {}).get("nodeName"):
            self._pods_by_node[obj["spec"]["nodeName"]][(ns, name)] = obj
        index = self._label_index[(rt.key, ns)]
        for kv in (obj["metadata"].get("labels") or {}).items():
            index[kv].add(name)
        if rt is SERVICES:
            for k, v in (obj.get("spec", {}).get("selector") or {}).items():
                self._services_by_selector[(ns, k, v)].add(name)

    def _drop(self, rt: ResourceType, obj: dict) -> None:
        ns, name = _key(obj)
        current = self._by_ns[rt.key][ns].get(name)
        if current is None:
            return
        del self._by_ns[rt.key][ns][name]
        for ref in current["metadata"].get("ownerReferences") or ():
            dependents = self._by_owner.get(ref["uid"])
            if dependents is not None:
                dependents.pop((rt.key, ns, name), None)
                if not dependents:
                    del self._by_owner[ref["uid"]]
        if rt is PODS and current.get("spec", {}).get("nodeName"):
            self._pods_by_node[current["spec"]["nodeName"]].pop((ns, name), None)
        index = self._label_index[(rt.key, ns)]
        for kv in (current["metadata"].get("labels") or {}).items():
            names = index.get(kv)
            if names is not None:
                names.discard(name)
                if not names:
                    del index[kv]
        if rt is SERVICES:
            for k, v in (current.get("spec", {}).get("selector") or {}).items():
                names = self._services_by_selector.get((ns, k, v))
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self._services_by_selector[(ns, k, v)]

    # ---- queries (shared read-only objects: never mutate them) ------------------------------------
    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict | None:
        with self._lock:
            return self._by_ns[rt.key].get(namespace or "", {}).get(name)

    def list(self, rt: ResourceType, namespace: str | None = None) -> list[dict]:
        with self._lock:
            if namespace is not None:
                return list(self._by_ns[rt.key].get(namespace, {}).values())
            return [o for objs in self._by_ns[rt.key].values() for o in objs.values()]

    def namespaces_with(self, rt: ResourceType) -> list[str]:
        with self._lock:
            return [ns for ns, objs in self._by_ns[rt.key].items() if objs]

    def pods_on_node(self, node: str) -> list[dict]:
        with self._lock:
            return list(self._pods_by_node.get(node, {}).values())

    def dependents(self, owner_uid: str) -> list[tuple[str, dict]]:
        """(resource key, object) of everything whose ownerReferences name this uid."""
        with self._lock:
            return [(k[0], o) for k, o in self._by_owner.get(owner_uid, {}).items()]

    def controlled_by(self, rt: ResourceType, owner_uid: str) -> list[dict]:
        with self._lock:
            return [o for k, o in self._by_owner.get(owner_uid, {}).items()
                    if k[0] == rt.key and _controller_uid(o) == owner_uid]

    def services_selecting(self, namespace: str, pod_labels: dict | None) -> list[dict]:
        """Services whose selector matches these labels, found through their selectors' items."""
        with self._lock:
            services = self._by_ns[SERVICES.key].get(namespace)
            if not services:
                return []
            names = set()
            for k, v in (pod_labels or {}).items():
                names |= self._services_by_selector.get((namespace, k, v), set())
            candidates = [services[n] for n in names if n in services]
        return [s for s in candidates if labelsel.map_matches(s["spec"].get("selector"), pod_labels)]

    def select(self, rt: ResourceType, namespace: str, requirements: list) -> list[dict]:
        """Objects of a namespace matching label requirements, narrowed first by the label index."""
        with self._lock:
            objs = self._by_ns[rt.key].get(namespace, {})
            index = self._label_index.get((rt.key, namespace), {})
            equalities = [(k, vals[0]) for k, op, vals in requirements if op == "In" and len(vals) == 1]
            if equalities:
                postings = [index.get(kv, ()) for kv in equalities]
                names = min(postings, key=len)
                candidates = [objs[n] for n in names if n in objs]
            else:
                candidates = list(objs.values())
        return [o for o in candidates if labelsel.matches(requirements, o["metadata"].get("labels"))]


def _key(obj: dict) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", "") or "", meta["name"]


def _controller_uid(obj: dict) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or ():
        if ref.get("controller"):
            return ref["uid"]
    return None
