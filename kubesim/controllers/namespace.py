"""namespace-controller: empties a Terminating namespace of all its content, then removes it."""
from __future__ import annotations

from ..resources import NAMESPACES, RESOURCE_TYPES
from ..store import DELETED, Event
from .base import Controller

NAMESPACED = tuple(rt for rt in RESOURCE_TYPES if rt.namespaced)


class NamespaceController(Controller):
    name = "namespace"

    def watches(self):
        keys = {rt.key: self._content_gone for rt in NAMESPACED}
        keys[NAMESPACES.key] = lambda e: [e.object["metadata"]["name"]] \
            if e.object["metadata"].get("deletionTimestamp") and e.type != DELETED else []
        return keys

    def initial_keys(self):
        return [ns["metadata"]["name"] for ns in self.cache.list(NAMESPACES) if ns["metadata"].get("deletionTimestamp")]

    def _content_gone(self, event: Event):
        """The last objects leaving a terminating namespace let it go."""
        if event.type != DELETED:
            return ()
        ns = self.cache.get(NAMESPACES, None, event.object["metadata"]["namespace"])
        return [ns["metadata"]["name"]] if ns is not None and ns["metadata"].get("deletionTimestamp") else ()

    def sync(self, name) -> None:
        ns = self.cache.get(NAMESPACES, None, name)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        remaining = 0
        for rt in NAMESPACED:
            for obj in self.cache.list(rt, name):
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    self.store.delete(rt, name, obj["metadata"]["name"])
                elif rt.key != "pods" and not set(obj["metadata"].get("finalizers") or ()) - {"foregroundDeletion", "orphan"}:
                    self.store.remove(rt, name, obj["metadata"]["name"])
        if remaining:
            self.requeue_after(name, 1.0)   # pods terminate gracefully; look again even without events
            return
        self.store.remove(NAMESPACES, None, name)
