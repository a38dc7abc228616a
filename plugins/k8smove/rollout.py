"""When is a rollout done, and if it is not, why — pure functions over objects as the API returns them.

``RolloutTracker`` keeps the latest workloads, pods and node labels seen (from lists and watch events)
and answers ``pending()``: an empty list once every workload's rollout is complete and every one of its
pods is Running and Ready on a node its nodeSelector matches.
"""
from __future__ import annotations

from k8smove.labels import matches, selector_string

WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def workloads_in(manifests: list[dict]) -> list[dict]:
    """[{kind, name, node_selector}] of the Deployments/StatefulSets among manifests."""
    return [{"kind": m["kind"], "name": m["metadata"]["name"],
             "node_selector": m["spec"]["template"]["spec"].get("nodeSelector", {})}
            for m in manifests if m["kind"] in WORKLOAD_KINDS]


def _pod_ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return pod.get("status", {}).get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _rollout_problem(kind: str, workload: dict) -> str | None:
    """kubectl rollout status's conditions, without the pods (``kind``: a listed item carries none)."""
    spec, status = workload.get("spec", {}), workload.get("status", {})
    want = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < workload["metadata"].get("generation", 0):
        return "waiting for the controller to observe the new generation"
    counts = {field: status.get(field, 0) for field in ("replicas", "updatedReplicas", "readyReplicas",
                                                          "availableReplicas")}
    if kind == "StatefulSet":
        if status.get("updateRevision") and status.get("currentRevision") != status.get("updateRevision"):
            return f"{status.get('currentRevision')} -> {status.get('updateRevision')} in progress"
    if any(count != want for count in counts.values()):
        return ", ".join(f"{field}={count}" for field, count in counts.items()) + f" (want {want})"
    return None


class RolloutTracker:
    def __init__(self, workloads: list[dict]):
        self.workloads = workloads                         # [{kind, name, node_selector, avoid_nodes?}]
        self.objects: dict[tuple[str, str], dict] = {}     # (kind, name) -> latest workload object
        self.pods: dict[str, dict] = {}                    # name -> latest pod
        self.node_labels: dict[str, dict] = {}             # node name -> labels
        self.node_ready: dict[str, bool] = {}              # node name -> Ready (False once deleted)

    def observe(self, kind: str, event_type: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "Pod":
            if event_type == "DELETED":
                self.pods.pop(name, None)
            else:
                self.pods[name] = obj
        elif kind == "Node":
            self.node_labels[name] = obj["metadata"].get("labels", {})
            conditions = {c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions") or []}
            self.node_ready[name] = event_type != "DELETED" and conditions.get("Ready", "True") == "True"
        elif event_type == "DELETED":
            self.objects.pop((kind, name), None)
        else:
            self.objects[(kind, name)] = obj

    def forget(self, kind: str) -> None:
        """Drop what a relist of ``kind`` replaces."""
        if kind == "Pod":
            self.pods.clear()
        elif kind == "Node":
            self.node_labels.clear()
            self.node_ready.clear()
        else:
            self.objects = {key: obj for key, obj in self.objects.items() if key[0] != kind}

    def pods_of(self, workload: dict) -> list[dict]:
        obj = self.objects.get((workload["kind"], workload["name"]))
        if obj is None:
            return []
        selector = obj["spec"]["selector"].get("matchLabels", {})
        return [p for p in self.pods.values() if matches(selector, p["metadata"].get("labels"))]

    def _stranded(self, pod: dict) -> bool:
        """Terminating on a node that is not Ready (or gone): no kubelet confirms its end, and it serves nothing."""
        node = pod["spec"].get("nodeName")
        return bool(pod["metadata"].get("deletionTimestamp")) and not self.node_ready.get(node, True)

    def pending(self) -> list[str]:
        """What is not done yet, one line per workload; [] when everything is."""
        problems = []
        for workload in self.workloads:
            label = f"{workload['kind']} {workload['name']}"
            obj = self.objects.get((workload["kind"], workload["name"]))
            if obj is None:
                problems.append(f"{label}: not found")
                continue
            if problem := _rollout_problem(workload["kind"], obj):
                problems.append(f"{label}: {problem}")
                continue
            pods = [p for p in self.pods_of(workload) if not self._stranded(p)]
            want = obj["spec"].get("replicas", 1)
            target, avoid = workload["node_selector"], workload.get("avoid_nodes", ())
            good = [p for p in pods if _pod_ready(p) and not p["metadata"].get("deletionTimestamp")
                    and p["spec"].get("nodeName") not in avoid
                    and matches(target, self.node_labels.get(p["spec"].get("nodeName"), {}))]
            if len(good) != want or len(pods) != want:
                where = (f" with {selector_string(target)}" if target else "") + (
                    f" outside {', '.join(avoid)}" if avoid else "")
                problems.append(f"{label}: {len(good)}/{want} pods Ready on nodes{where}, {len(pods)} pods in total")
        return problems


def diagnose(pods: list[dict], events: list[dict]) -> list[str]:
    """The cluster's own reasons a rollout is stuck: scheduling, image pulls, crashes, failing probes."""
    reasons = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status", {})
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                reasons.append(f"pod {name}: {condition.get('reason')}: {condition.get('message')}")
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating"):
                reasons.append(f"pod {name} container {container['name']}: {waiting['reason']}: "
                               f"{waiting.get('message', '')}".rstrip(": "))
            elif container.get("started") and not container.get("ready"):
                reasons.append(f"pod {name} container {container['name']}: running but not Ready")
    pod_uids = {p["metadata"]["name"]: p["metadata"].get("uid") for p in pods}
    seen = set()
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        involved = event.get("involvedObject", {})
        if event.get("type") != "Warning" or involved.get("name") not in pod_uids:
            continue
        if involved.get("uid") and pod_uids[involved["name"]] and involved["uid"] != pod_uids[involved["name"]]:
            continue   # an earlier pod of the same name (a StatefulSet's, re-created): not this one's reason
        line = f"pod {involved['name']}: {event.get('reason')}: {event.get('message')}"
        if line not in seen:
            seen.add(line)
            reasons.append(line)
    return reasons
