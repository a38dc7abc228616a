"""replicaset-controller: keeps the number of active pods of a ReplicaSet at spec.replicas and reports
ready/available counts."""
from __future__ import annotations

import time

from ..resources import PODS, REPLICASETS
from ..store import Event
from .base import Controller, obj_key, same_keys_unless_status
from .owners import controller_ref, owner_keys
from .pods import (is_active, is_available, is_ready, parse_time, pod_from_template, ready_since,
                   seconds_until_available)

COMPONENT = "replicaset-controller"
BURST = 500   # upstream creates/deletes at most this many pods per sync


class ReplicaSetController(Controller):
    name = "replicaset"

    def watches(self):
        return {REPLICASETS.key: same_keys_unless_status, PODS.key: self._pod_owner}

    def initial_keys(self):
        return [obj_key(rs) for rs in self.cache.list(REPLICASETS)]

    @staticmethod
    def _pod_owner(event: Event):
        after = () if event.type == "DELETED" else replica_view(event.object)
        if event.old is not None and replica_view(event.old) == after:
            return []   # nothing the ReplicaSet counts has changed
        keys = owner_keys(event.object, "ReplicaSet")
        if event.old is not None:
            keys += owner_keys(event.old, "ReplicaSet")
        return keys

    def sync(self, key) -> None:
        ns, name = key
        rs = self.cache.get(REPLICASETS, ns, name)
        if rs is None:
            return
        pods = [p for p in self.cache.controlled_by(PODS, rs["metadata"]["uid"]) if is_active(p)]
        if not rs["metadata"].get("deletionTimestamp"):
            pods = self._manage(rs, pods)
        self._update_status(rs, pods)

    def _manage(self, rs: dict, pods: list[dict]) -> list[dict]:
        diff = len(pods) - int(rs["spec"].get("replicas", 1))
        ns = rs["metadata"]["namespace"]
        if diff < 0:
            ref = controller_ref(rs, REPLICASETS)
            for _ in range(min(-diff, BURST)):
                pod = pod_from_template(rs["spec"]["template"], ns, ref, generate_name=f"{rs['metadata']['name']}-")
                self.store.create(PODS, pod, echo=False, adopt=True)   # pod is now the stored, shared object
                self.events.normal(rs, "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", COMPONENT)
                pods.append(pod)
        elif diff > 0:
            doomed = sorted(pods, key=deletion_rank)[:min(diff, BURST)]
            for pod in doomed:
                self.store.delete(PODS, ns, pod["metadata"]["name"], echo=False)
                self.events.normal(rs, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", COMPONENT)
            gone = {p["metadata"]["uid"] for p in doomed}
            pods = [p for p in pods if p["metadata"]["uid"] not in gone]
        return pods

    def _update_status(self, rs: dict, pods: list[dict]) -> None:
        min_ready = int(rs["spec"].get("minReadySeconds", 0))
        template_labels = ((rs["spec"]["template"].get("metadata") or {}).get("labels") or {}).items()
        now = time.time()
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(1 for p in pods if template_labels <= (p["metadata"].get("labels") or {}).items()),
            "readyReplicas": sum(1 for p in pods if is_ready(p)),
            "availableReplicas": sum(1 for p in pods if is_available(p, min_ready, now)),
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        status = {k: v for k, v in status.items() if v or k in ("replicas", "observedGeneration")}
        if (rs.get("status") or {}).get("conditions"):
            status["conditions"] = rs["status"]["conditions"]
        if status != rs.get("status"):
            self.store.mutate(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"],
                              lambda r: r.update(status=status), subresource="status", echo=False, touches=())
        waits = [w for w in (seconds_until_available(p, min_ready) for p in pods) if w is not None]
        if waits:
            self.requeue_after(obj_key(rs), min(waits))


def replica_view(pod: dict) -> tuple:
    """What a ReplicaSet's status counts of a pod: nothing at all once it is no longer active. (Deletion
    ranking reads the cache when it deletes, so placement and phase changes need no sync.)"""
    if not is_active(pod):
        return ()
    return pod["metadata"].get("labels"), pod["metadata"].get("ownerReferences"), is_ready(pod), ready_since(pod)


def deletion_rank(pod: dict) -> tuple:
    """Which pods to delete first, like upstream ActivePods ordering: unscheduled, pending, not ready,
    ready for less time, more restarts, newer."""
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get((pod.get("status") or {}).get("phase"), 0)
    since = ready_since(pod)
    restarts = sum(cs.get("restartCount", 0) for cs in (pod.get("status") or {}).get("containerStatuses") or ())
    created = parse_time(pod["metadata"]["creationTimestamp"])
    return (bool(pod["spec"].get("nodeName")), phase_rank, since is not None, -(since or 0), -restarts, -created)
