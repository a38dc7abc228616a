"""k8smove.maintenance's plain logic: the plan, the nodeAffinity exclusion and its release, what is left."""
from __future__ import annotations

import json

import pytest

from k8smove import K8sMoveError
from k8smove.maintenance import (
    EVICT_PODS,
    EXCLUSION_ANNOTATION,
    PATCH_DEPLOYMENTS,
    blocking,
    describe_missing_rights,
    describe_plan,
    exclusion_manifest,
    make_plan,
    release_patch,
    select_nodes,
    what_is_left,
    writes_of,
)
from k8smove.rollout import RolloutTracker

MANAGED = {"app.kubernetes.io/managed-by": "k8smove"}
NOT_IN_NODE1 = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node1"]}


def node(name, labels=None, ready=True, unschedulable=False):
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"unschedulable": unschedulable} if unschedulable else {},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}],
                       "allocatable": {"cpu": "2", "memory": "4Gi"}}}


def workload(name, kind="Deployment", strategy="RollingUpdate", node_selector=None, affinity_terms=None,
             labels=MANAGED, annotations=None):
    spec = {"containers": [{"name": "c", "image": "nginx"}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if affinity_terms is not None:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": affinity_terms}}}
    return {"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "default", "labels": labels, "annotations": annotations or {}},
            "spec": {"selector": {"matchLabels": {"app": name}}, "strategy": {"type": strategy},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def pod(name, app=None, node_name="node1", owner="ReplicaSet", volumes=(), annotations=None, phase="Running"):
    meta = {"name": name, "namespace": "default", "labels": {"app": app or name}, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    return {"metadata": meta, "spec": {"nodeName": node_name, "containers": [], "volumes": list(volumes)},
            "status": {"phase": phase}}


def plan_of(pods, workloads, nodes=None, pvcs=(), pvs=(), target=None, allow_local_storage=False):
    nodes = nodes or [node("node1", {"maintenance": "scheduled"}), node("node2")]
    return make_plan(nodes, pods, workloads, list(pvcs), list(pvs), {"maintenance": "scheduled"}, target,
                     {"maintenance": "ready"}, allow_local_storage)


def test_nodes_and_pool():
    nodes = [node("node1", {"maintenance": "scheduled"}), node("node2", {"pool": "a"}), node("node3"),
             node("node4", ready=False), node("node5", unschedulable=True)]
    plan = plan_of([], [], nodes)
    assert plan["nodes"] == ["node1"] and plan["pool"] == ["node2", "node3"]
    assert plan["ready_labels"] == {"node1": {"maintenance": "ready"}}
    assert plan_of([], [], nodes, target={"pool": "a"})["pool"] == ["node2"]


def test_nothing_marked_plans_nothing():
    plan = plan_of([pod("a")], [], [node("node1"), node("node2")])
    assert plan["nodes"] == [] and plan["moves"] == [] and plan["evict"] == []
    assert describe_plan(plan) == ["No node is marked for maintenance: nothing to do"]


@pytest.mark.parametrize("marks,target,label_given,message", [
    ({"node1": {"maintenance": "scheduled"}, "node2": {"maintenance": "scheduled"}}, None, False,
     r"maintenance_label maintenance=scheduled matches every node \(node1, node2\): none would be left"),
    ({"node1": {}, "node2": {}}, None, True,
     r"maintenance_label maintenance=scheduled matches no node \(nodes: node1, node2\): nothing to take"),
    ({"node1": {}, "node2": {}}, {"pool": "b"}, False,
     r"target_selector pool=b matches no node: no Ready, schedulable node labelled pool=b outside maintenance "
     r"\(none marked\)"),
])
def test_selectors_that_select_nothing_or_every_node_are_refused_naming_the_key(marks, target, label_given,
                                                                                message):
    nodes = [node(name, labels) for name, labels in marks.items()]
    with pytest.raises(K8sMoveError, match=message):
        select_nodes(nodes, {"maintenance": "scheduled"}, target, label_given)


def test_no_pool_is_refused():
    with pytest.raises(K8sMoveError, match="no Ready, schedulable node labelled pool=b outside maintenance"):
        plan_of([], [], target={"pool": "b"})


def test_moves_are_surge_for_rolling_deployments_and_recreate_for_the_others():
    workloads = [workload("web"), workload("db", kind="StatefulSet"), workload("q", strategy="Recreate"),
                 workload("elsewhere")]
    pods = [pod("web-1", "web"), pod("web-2", "web", node_name="node2"), pod("db-0", "db", owner="StatefulSet"),
            pod("q-1", "q"), pod("elsewhere-1", "elsewhere", node_name="node2")]
    plan = plan_of(pods, workloads, target={"kubernetes.io/hostname": "node2"})
    moves = {m["name"]: m for m in plan["moves"]}
    assert {name: m["mode"] for name, m in moves.items()} == {"web": "surge", "db": "recreate", "q": "recreate"}
    assert moves["web"]["pods"] == ["default/web-1"] and moves["web"]["avoid_nodes"] == ["node1"]
    assert moves["web"]["node_selector"] == {"kubernetes.io/hostname": "node2"}
    assert moves["db"]["node_selector"] == {} and moves["db"]["target_selector"] == {}   # eviction places it
    assert plan["evict"] == [] and plan["refused"] == []


@pytest.mark.parametrize("access_modes,mode", [(["ReadWriteOnce"], "recreate"), (["ReadWriteMany"], "surge")])
def test_a_deployment_holding_a_single_writer_volume_is_recreated(access_modes, mode):
    pvc = {"metadata": {"name": "data", "namespace": "default"}, "spec": {"accessModes": access_modes}}
    pods = [pod("files-1", "files", volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}])]
    assert plan_of(pods, [workload("files")], pvcs=[pvc])["moves"][0]["mode"] == mode


def test_a_workload_on_node_local_storage_or_with_nowhere_to_go_is_refused():
    pvc = {"metadata": {"name": "data", "namespace": "default"}, "spec": {"volumeName": "pv-1"}}
    pv = {"metadata": {"name": "pv-1"}, "spec": {"nodeAffinity": {"required": {}}}}
    workloads = [workload("db", kind="StatefulSet"), workload("pinned", node_selector={"disk": "ssd"})]
    pods = [pod("db-0", "db", volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]),
            pod("pinned-1", "pinned")]
    plan = plan_of(pods, workloads, pvcs=[pvc], pvs=[pv])
    assert plan["moves"] == []
    refused = {r["workload"]: r for r in plan["refused"]}
    assert refused["StatefulSet default/db"]["reason"] == (
        "on node-local storage (pod db-0: PersistentVolumeClaim data on node-local volume pv-1): "
        "moving it would leave its data behind")
    assert refused["Deployment default/pinned"]["reason"] == (
        "fits on no node outside maintenance: node2: not labelled disk=ssd")
    assert refused["Deployment default/pinned"]["pods"] == ["default/pinned-1"]


def test_other_pods_are_evicted_or_left_alone_with_the_reason():
    pods = [pod("plain"), pod("ds", owner="DaemonSet"), pod("mirror", owner="Node",
                                                               annotations={"kubernetes.io/config.mirror": "x"}),
            pod("bare", owner=None), pod("scratch", volumes=[{"name": "tmp", "emptyDir": {}}]),
            pod("done", phase="Succeeded")]
    plan = plan_of(pods, [])
    assert plan["evict"] == [{"namespace": "default", "name": "plain", "node": "node1"}]
    untouched = {u["pod"]: (u["blocks"], u["reason"]) for u in plan["untouched"]}
    assert untouched == {
        "default/ds": (False, "DaemonSet pod: its DaemonSet runs one on every node"),
        "default/mirror": (False, "mirror pod: the kubelet runs it from a static manifest"),
        "default/bare": (True, "not managed by a controller: evicting it would delete it for good"),
        "default/scratch": (True, "uses local storage (emptyDir tmp): its data would be lost "
                                  "(allow_local_storage evicts it)"),
    }
    allowed = plan_of(pods, [], allow_local_storage=True)
    assert [p["name"] for p in allowed["evict"]] == ["plain", "scratch"]



def test_the_writes_a_plan_needs_are_named_per_namespace_and_a_missing_one_blocks_it():
    """A surge move patches its Deployment, a recreate move and an eviction use the Eviction API: each in the
    workload's namespace, which is where include/rbac/namespace/ must be applied."""
    workloads = [workload("web"), workload("db", kind="StatefulSet")]
    pods = [pod("web-1", "web"), pod("db-0", "db", owner="StatefulSet"), pod("plain")]
    plan = plan_of(pods, workloads)
    assert writes_of(plan) == {("default", PATCH_DEPLOYMENTS): ["Deployment default/web"],
                               ("default", EVICT_PODS): ["StatefulSet default/db", "pod default/plain"]}
    assert blocking(plan) == []
    missing = [{"namespace": "default", "verb": "create", "resource": "pods/eviction",
                "for": ["StatefulSet default/db", "pod default/plain"]}]
    expected = ("namespace default: not allowed to create pods/eviction (needed for StatefulSet default/db, pod "
                "default/plain); grant k8smove's maintenance rights there: "
                "kubectl apply -n default -f include/rbac/namespace/")
    assert describe_missing_rights(missing) == [expected]
    assert blocking({**plan, "missing_rights": missing}) == [expected]
    assert f"refuse   {expected}" in describe_plan({**plan, "missing_rights": missing})

def test_exclusion_keeps_the_apps_own_terms_and_replaces_an_earlier_one():
    own = {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
    manifest = exclusion_manifest(workload("web", affinity_terms=[own]), ["node1"], {"pool": "a"})
    ours = [NOT_IN_NODE1, {"key": "pool", "operator": "In", "values": ["a"]}]
    terms = manifest["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": own["matchExpressions"] + ours}]
    assert json.loads(manifest["metadata"]["annotations"][EXCLUSION_ANNOTATION]) == ours
    assert set(manifest["metadata"]) == {"name", "namespace", "annotations"}   # only what we own

    applied = workload("web", affinity_terms=terms, annotations=manifest["metadata"]["annotations"])
    again = exclusion_manifest(applied, ["node2"], {})
    assert again["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": own["matchExpressions"] + [{**NOT_IN_NODE1, "values": ["node2"]}]}]


def test_release_gives_back_the_apps_terms_or_removes_ours():
    annotations = {EXCLUSION_ANNOTATION: json.dumps([NOT_IN_NODE1])}
    alone = workload("web", affinity_terms=[{"matchExpressions": [NOT_IN_NODE1]}], annotations=annotations)
    # Nothing of the affinity was the app's: all of it goes, so the template hashes as before the exclusion.
    assert release_patch(alone, ["node1"]) == {
        "metadata": {"annotations": {EXCLUSION_ANNOTATION: None}},
        "spec": {"template": {"spec": {"affinity": None}}}}
    own = {"key": "disk", "operator": "In", "values": ["ssd"]}
    shared = workload("web", affinity_terms=[{"matchExpressions": [own, NOT_IN_NODE1]}], annotations=annotations)
    assert release_patch(shared, ["node1"])["spec"]["template"]["spec"]["affinity"]["nodeAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [own]}]}}


def test_what_is_left_names_each_pod_and_why():
    pods = [pod("guarded"), pod("db-0", "db"), pod("ds", owner="DaemonSet"), pod("late")]
    plan = plan_of(pods, [workload("db", kind="StatefulSet", node_selector={"disk": "ssd"})])
    left = what_is_left(plan, pods, {"blocked": {"default/guarded": "Cannot evict pod"}})
    assert left == [
        "default/db-0 on node1: StatefulSet default/db not moved: fits on no node outside maintenance: "
        "node2: not labelled disk=ssd",
        "default/guarded on node1: eviction refused: Cannot evict pod",
        "default/late on node1: arrived after the eviction step",
    ]
    assert what_is_left(plan, [pod("ds", owner="DaemonSet")], {}) == []


def test_rollout_is_pending_while_a_pod_is_on_an_avoided_node():
    tracker = RolloutTracker([{"kind": "Deployment", "name": "web", "node_selector": {}, "avoid_nodes": ["node1"]}])
    dep = workload("web")
    dep["metadata"]["generation"] = 1
    dep["spec"]["replicas"] = 1
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                     "availableReplicas": 1}
    tracker.observe("Deployment", "ADDED", dep)
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    tracker.observe("Pod", "ADDED", {**pod("web-1", "web"), "status": ready})
    assert tracker.pending() == ["Deployment web: 0/1 pods Ready on nodes outside node1, 1 pods in total"]
    tracker.observe("Pod", "DELETED", pod("web-1", "web"))
    tracker.observe("Pod", "ADDED", {**pod("web-2", "web", node_name="node2"), "status": ready})
    assert tracker.pending() == []
