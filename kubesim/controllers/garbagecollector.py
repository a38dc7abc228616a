"""garbage-collector: deletes dependents whose owners are gone (background), holds an owner with the
foregroundDeletion finalizer until its blocking dependents are gone, and orphans dependents (orphan)."""
from __future__ import annotations

from ..resources import BY_KEY, EVENTS, EVENTS_V1, RESOURCE_TYPES, by_kind
from ..store import DELETED, Event
from .base import Controller

FOREGROUND, ORPHAN = "foregroundDeletion", "orphan"


class GarbageCollector(Controller):
    name = "garbagecollector"

    def watches(self):
        return {rt.key: self._keys for rt in RESOURCE_TYPES if rt not in (EVENTS, EVENTS_V1)}

    def initial_keys(self):
        return [("dependent", rt.key, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                for rt in RESOURCE_TYPES if rt not in (EVENTS, EVENTS_V1)
                for o in self.cache.list(rt) if o["metadata"].get("ownerReferences")]

    @staticmethod
    def _keys(event: Event):
        meta = event.object["metadata"]
        ns, rt_key = meta.get("namespace", ""), event.resource.key
        keys = []
        if event.type == DELETED:
            keys.append(("owner-gone", meta["uid"]))
            # a dependent going away may release an owner waiting in foreground deletion
            keys += [("finalize", _rt_key(ref), ns, ref["name"]) for ref in meta.get("ownerReferences") or ()]
            return [k for k in keys if k[0] == "owner-gone" or k[1]]
        if meta.get("deletionTimestamp") and set(meta.get("finalizers") or ()) & {FOREGROUND, ORPHAN}:
            keys.append(("finalize", rt_key, ns, meta["name"]))
        if meta.get("ownerReferences") and (event.old is None or
                                            event.old["metadata"].get("ownerReferences") != meta["ownerReferences"]):
            keys.append(("dependent", rt_key, ns, meta["name"]))
        return keys

    def sync(self, key) -> None:
        if key[0] == "owner-gone":
            for rt_key, dependent in self.cache.dependents(key[1]):
                self._collect(BY_KEY[rt_key], dependent)
        elif key[0] == "dependent":
            rt = BY_KEY[key[1]]
            obj = self.cache.get(rt, key[2], key[3])
            if obj is not None:
                self._collect(rt, obj)
        else:
            self._finalize(BY_KEY[key[1]], key[2], key[3])

    def _owner_exists(self, dependent: dict, ref: dict) -> bool:
        rt = by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
        if rt is None:
            return True    # an owner kind we do not serve: never collect on its account
        owner = self.cache.get(rt, dependent["metadata"].get("namespace") if rt.namespaced else None, ref["name"])
        return owner is not None and owner["metadata"]["uid"] == ref["uid"]

    def _collect(self, rt, obj: dict) -> None:
        """Delete a dependent whose owners are all gone; drop dangling references when some remain."""
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs or obj["metadata"].get("deletionTimestamp"):
            return
        dangling = [r for r in refs if not self._owner_exists(obj, r)]
        if not dangling:
            return
        ns, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
        if len(dangling) < len(refs):
            gone = {r["uid"] for r in dangling}
            self.store.mutate(rt, ns, name, lambda o: o["metadata"].update(
                ownerReferences=[r for r in o["metadata"].get("ownerReferences") or () if r["uid"] not in gone]))
            return
        self.store.delete(rt, ns, name, propagation="Background")

    def _finalize(self, rt, ns: str, name: str) -> None:
        obj = self.cache.get(rt, ns or None, name)
        if obj is None or not obj["metadata"].get("deletionTimestamp"):
            return
        finalizers = obj["metadata"].get("finalizers") or []
        uid = obj["metadata"]["uid"]
        dependents = self.cache.dependents(uid)
        if ORPHAN in finalizers:
            for dep_key, dep in dependents:
                self.store.mutate(BY_KEY[dep_key], dep["metadata"].get("namespace"), dep["metadata"]["name"],
                                  lambda o: o["metadata"].update(ownerReferences=[
                                      r for r in o["metadata"].get("ownerReferences") or () if r["uid"] != uid]))
            self._drop_finalizer(rt, ns, name, ORPHAN)
        elif FOREGROUND in finalizers:
            blocking = 0
            for dep_key, dep in dependents:
                ref = next((r for r in dep["metadata"].get("ownerReferences") or () if r["uid"] == uid), {})
                if not dep["metadata"].get("deletionTimestamp"):
                    # pods have no dependents; everything else cascades in the foreground too, as upstream
                    self.store.delete(BY_KEY[dep_key], dep["metadata"].get("namespace"), dep["metadata"]["name"],
                                      propagation="Background" if dep_key == "pods" else "Foreground")
                blocking += bool(ref.get("blockOwnerDeletion"))
            if not blocking:
                self._drop_finalizer(rt, ns, name, FOREGROUND)

    def _drop_finalizer(self, rt, ns: str, name: str, finalizer: str) -> None:
        self.store.mutate(rt, ns or None, name, lambda o: o["metadata"].update(
            finalizers=[f for f in o["metadata"].get("finalizers") or () if f != finalizer]))


def _rt_key(ref: dict) -> str | None:
    rt = by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
    return rt.key if rt is not None else None
