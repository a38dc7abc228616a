"""RolloutTracker: complete only when the rollout is done and every pod is Ready on a target node."""
from __future__ import annotations

from k8smove.rollout import RolloutTracker, diagnose, workloads_in

SELECTOR = {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "app"}


def deployment(generation=2, observed=2, replicas=1, updated=1, ready=1, available=1, total=1):
    return {"kind": "Deployment", "metadata": {"name": "demo-app", "generation": generation},
            "spec": {"replicas": replicas, "selector": {"matchLabels": SELECTOR},
                     "template": {"spec": {"nodeSelector": {"demo": "node2"}}}},
            "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated,
                       "readyReplicas": ready, "availableReplicas": available}}


def pod(name, node, ready=True, deleting=False):
    meta = {"name": name, "labels": dict(SELECTOR)}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}}


def tracker_with(dep, *pods):
    tracker = RolloutTracker(workloads_in([dep]))
    tracker.observe("Node", "ADDED", {"metadata": {"name": "node1", "labels": {"demo": "node1"}}})
    tracker.observe("Node", "ADDED", {"metadata": {"name": "node2", "labels": {"demo": "node2"}}})
    tracker.observe("Deployment", "MODIFIED", dep)
    for p in pods:
        tracker.observe("Pod", "ADDED", p)
    return tracker


def test_complete():
    assert tracker_with(deployment(), pod("new", "node2")).pending() == []


def test_generation_not_observed():
    assert "observe the new generation" in tracker_with(deployment(observed=1), pod("new", "node2")).pending()[0]


def test_old_pod_left():
    pending = tracker_with(deployment(total=2), pod("new", "node2"), pod("old", "node1")).pending()
    assert "replicas=2" in pending[0]


def test_terminating_old_pod_still_counts():
    pending = tracker_with(deployment(), pod("new", "node2"), pod("old", "node1", deleting=True)).pending()
    assert pending == ["Deployment demo-app: 1/1 pods Ready on nodes with demo=node2, 2 pods in total"]


def test_a_pod_terminating_on_a_node_that_is_not_ready_is_not_waited_for():
    """It never ends while its node is down (no kubelet confirms it) and serves nothing: a rollback back to the
    source must not wait for it."""
    tracker = tracker_with(deployment(), pod("new", "node2"), pod("old", "node1", deleting=True))
    down = {"metadata": {"name": "node1", "labels": {"demo": "node1"}},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    tracker.observe("Node", "MODIFIED", down)
    assert tracker.pending() == []
    tracker.observe("Node", "MODIFIED", {**down, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert tracker.pending() != []
    tracker.observe("Node", "DELETED", down)
    assert tracker.pending() == []


def test_pod_on_wrong_node():
    assert tracker_with(deployment(), pod("p", "node1")).pending()


def test_pod_not_ready_then_ready():
    tracker = tracker_with(deployment(ready=0, available=0), pod("p", "node2", ready=False))
    assert tracker.pending()
    tracker.observe("Deployment", "MODIFIED", deployment())
    tracker.observe("Pod", "MODIFIED", pod("p", "node2"))
    assert tracker.pending() == []


def test_deleted_pod_is_forgotten():
    tracker = tracker_with(deployment(), pod("new", "node2"), pod("old", "node1", deleting=True))
    tracker.observe("Pod", "DELETED", pod("old", "node1"))
    assert tracker.pending() == []


def test_missing_workload():
    tracker = RolloutTracker([{"kind": "Deployment", "name": "demo-app", "node_selector": {}}])
    assert tracker.pending() == ["Deployment demo-app: not found"]


def test_diagnose_reads_scheduling_pulls_and_warnings():
    unschedulable = {"metadata": {"name": "a"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."}]}}
    pulling = {"metadata": {"name": "b"}, "status": {"containerStatuses": [
        {"name": "app", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}
    events = [{"type": "Warning", "reason": "Unhealthy", "message": "Readiness probe failed",
               "involvedObject": {"name": "b"}},
              {"type": "Warning", "reason": "Other", "message": "x", "involvedObject": {"name": "unrelated"}}]
    reasons = diagnose([unschedulable, pulling], events)
    assert reasons == [
        "pod a: Unschedulable: 0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
        "pod b container app: ImagePullBackOff: Back-off pulling image",
        "pod b: Unhealthy: Readiness probe failed"]


def test_diagnose_leaves_out_the_events_of_an_earlier_pod_of_the_same_name():
    pending = {"metadata": {"name": "db-0", "uid": "new"}, "status": {}}
    events = [{"type": "Warning", "reason": "FailedScheduling", "message": "0/2 nodes are available",
               "involvedObject": {"name": "db-0", "uid": "old"}},
              {"type": "Warning", "reason": "FailedMount", "message": "volume not attached",
               "involvedObject": {"name": "db-0", "uid": "new"}}]
    assert diagnose([pending], events) == ["pod db-0: FailedMount: volume not attached"]
