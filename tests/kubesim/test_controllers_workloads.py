"""Volumes, StatefulSets, PodDisruptionBudgets with eviction, garbage collection, namespaces and
service endpoints, driven through the Store with every controller running."""
from __future__ import annotations

import os

import pytest

from kubesim import errors
from kubesim.controllers import evict
from kubesim.resources import (CONTROLLERREVISIONS, DEPLOYMENTS, ENDPOINTS, ENDPOINTSLICES, EVENTS, NAMESPACES,
                               PDBS, PODS, PVCS, PVS, REPLICASETS, SERVICEACCOUNTS, SERVICES, STATEFULSETS)

from controller_harness import cluster, wait_for  # noqa: F401  (cluster: the fixture)



def ready(pod) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def ready_pods(store, app):
    return [p for p in store.list(PODS, "default") if p["metadata"]["labels"].get("app") == app and ready(p)
            and not p["metadata"].get("deletionTimestamp")]


def claim(name, sc=None):
    body = {"metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    if sc:
        body["spec"]["storageClassName"] = sc
    return body


def pod_with_claim(name, claim_name):
    return {"metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"containers": [{"name": "db", "image": "postgres:16"}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}]}}


def deployment(name, replicas, labels=None):
    labels = labels or {"app": name}
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "demo/app:1"}]}}}}


def test_local_path_claim_waits_for_consumer_and_pins_the_pod_to_its_node(cluster):
    store, _ = cluster
    store.create(PVCS, claim("data", "local-path"))
    wait_for(lambda: any(e["reason"] == "WaitForFirstConsumer" for e in store.list(EVENTS, "default")), what="wait")
    assert store.get(PVCS, "default", "data")["status"]["phase"] == "Pending"
    store.create(PODS, pod_with_claim("db", "data"))
    wait_for(lambda: store.get(PVCS, "default", "data").get("status", {}).get("phase") == "Bound", what="bound")
    pvc = store.get(PVCS, "default", "data")
    node = store.get(PODS, "default", "db")["spec"].get("nodeName") or \
        wait_for(lambda: store.get(PODS, "default", "db")["spec"].get("nodeName"), what="bound pod")
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == node
    pv = store.get(PVS, None, pvc["spec"]["volumeName"])
    assert pv["metadata"]["name"] == f"pvc-{pvc['metadata']['uid']}"
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [node]
    assert os.path.isdir(pv["metadata"]["annotations"]["kubesim.io/host-path"])
    assert pv["spec"]["claimRef"]["name"] == "data" and pv["status"]["phase"] == "Bound"
    # a second pod of the claim cannot go anywhere else, even when asked to
    other = "node2" if node == "node1" else "node1"
    body = pod_with_claim("db2", "data")
    body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": other}
    store.create(PODS, body)
    expected = ("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had volume "
                "node affinity conflict. preemption: 0/2 nodes are available: 2 Preemption is not helpful for "
                "scheduling.")
    wait_for(lambda: any(e["message"] == expected for e in store.list(EVENTS, "default")), what="conflict message")
    store.delete(PODS, "default", "db")
    store.delete(PODS, "default", "db2")
    wait_for(lambda: not store.list(PODS, "default"), what="pods gone")
    store.delete(PVCS, "default", "data")
    wait_for(lambda: not store.list(PVS), what="volume reclaimed")


def test_default_class_and_unbound_immediate_claim(cluster):
    store, _ = cluster
    store.create(PODS, pod_with_claim("early", "later"))
    wait_for(lambda: any(e["message"].startswith('0/2 nodes are available: persistentvolumeclaim "later" not found.')
                         for e in store.list(EVENTS, "default")), what="claim not found")
    store.create(PVCS, claim("later"))
    wait_for(lambda: store.get(PVCS, "default", "later").get("status", {}).get("phase") == "Bound", what="bound")
    assert store.get(PVCS, "default", "later")["spec"]["storageClassName"] == "standard"
    wait_for(lambda: ready(store.get(PODS, "default", "early")), what="pod runs once its claim is bound")


def test_statefulset_starts_pods_in_order_with_claims_and_rolls_from_the_top(cluster):
    store, _ = cluster
    sts = {"metadata": {"name": "pg", "namespace": "default"},
           "spec": {"replicas": 3, "serviceName": "pg", "selector": {"matchLabels": {"app": "pg"}},
                    "template": {"metadata": {"labels": {"app": "pg"}},
                                 "spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                              "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                                                       "resources": {"requests": {"storage": "1Gi"}}}}]}}
    watch = store.watch(PODS, "default", since_rv=store.resource_version)
    store.create(STATEFULSETS, sts)
    wait_for(lambda: store.get(STATEFULSETS, "default", "pg").get("status", {}).get("readyReplicas") == 3,
             what="3 ready")
    created, ready_when_created = [], {}
    while (event := watch.next(timeout=0.05)) is not None:
        name = event.object["metadata"]["name"]
        if event.type == "ADDED":
            created.append(name)
            ready_when_created[name] = sorted(p for p, r in ready_when_created.get("_", {}).items() if r)
        ready_when_created.setdefault("_", {})[name] = ready(event.object)
    watch.close()
    assert created == ["pg-0", "pg-1", "pg-2"]
    assert ready_when_created["pg-1"] == ["pg-0"] and ready_when_created["pg-2"] == ["pg-0", "pg-1"]
    assert {c["metadata"]["name"] for c in store.list(PVCS, "default")} == {"data-pg-0", "data-pg-1", "data-pg-2"}
    pod0 = store.get(PODS, "default", "pg-0")
    assert pod0["spec"]["hostname"] == "pg-0" and pod0["spec"]["subdomain"] == "pg"
    status = store.get(STATEFULSETS, "default", "pg")["status"]
    assert status["currentRevision"] == status["updateRevision"] == pod0["metadata"]["labels"]["controller-revision-hash"]

    store.mutate(STATEFULSETS, "default", "pg", lambda s: s["spec"]["template"]["spec"]["containers"][0]
                 .update(image="postgres:17"))
    wait_for(lambda: (lambda s: s.get("updatedReplicas") == 3 and s.get("readyReplicas") == 3
                      and s["currentRevision"] == s["updateRevision"] and
                      s["observedGeneration"] == 2)(store.get(STATEFULSETS, "default", "pg")["status"]),
             timeout=15, what="rolling update")
    deletions = [e["message"] for e in sorted(store.list(EVENTS, "default"), key=lambda e: e["metadata"]["name"])
                 if e["reason"] == "SuccessfulDelete"]
    assert deletions == [f"delete Pod pg-{i} in StatefulSet pg successful" for i in (2, 1, 0)]
    assert len(store.list(CONTROLLERREVISIONS, "default")) == 2
    for p in store.list(PODS, "default"):
        assert p["spec"]["nodeName"] == store.get(PODS, "default", p["metadata"]["name"])["spec"]["nodeName"]


def test_pdb_blocks_eviction_with_429_until_scaled_up(cluster):
    store, _ = cluster
    store.create(DEPLOYMENTS, deployment("app", 1))
    store.create(PDBS, {"metadata": {"name": "app-pdb", "namespace": "default"},
                        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "app"}}}})
    wait_for(lambda: len(ready_pods(store, "app")) == 1, what="app ready")
    wait_for(lambda: store.get(PDBS, "default", "app-pdb").get("status", {}).get("currentHealthy") == 1, what="pdb")
    victim = ready_pods(store, "app")[0]["metadata"]["name"]
    with pytest.raises(errors.ApiError) as refused:
        evict(store, "default", victim, {})
    assert refused.value.code == 429 and refused.value.reason == "TooManyRequests"
    assert refused.value.message == "Cannot evict pod as it would violate the pod's disruption budget."
    assert refused.value.details["causes"] == [{"reason": "DisruptionBudget", "message":
                                                "The disruption budget app-pdb needs 1 healthy pods and has 1 currently"}]
    status = store.get(PDBS, "default", "app-pdb")["status"]
    assert status["disruptionsAllowed"] == 0 and status["expectedPods"] == 1
    assert status["conditions"][0]["reason"] == "InsufficientPods"

    store.mutate(DEPLOYMENTS, "default", "app", lambda d: d["spec"].update(replicas=2))
    wait_for(lambda: store.get(PDBS, "default", "app-pdb").get("status", {}).get("disruptionsAllowed") == 1,
             what="budget allows one")
    evict(store, "default", victim, {"gracePeriodSeconds": 0})
    pdb = store.get(PDBS, "default", "app-pdb")["status"]
    assert pdb["disruptionsAllowed"] == 0 or victim not in pdb.get("disruptedPods", {})
    wait_for(lambda: store.find(PODS, "default", victim) is None, what="evicted pod gone")
    wait_for(lambda: len(ready_pods(store, "app")) == 2, what="replacement ready")


def test_garbage_collection_background_foreground_and_orphan(cluster):
    store, _ = cluster
    # background: the ReplicaSet goes at once, its pods follow
    store.create(DEPLOYMENTS, deployment("bg", 2))
    wait_for(lambda: len(ready_pods(store, "bg")) == 2, what="bg ready")
    store.delete(DEPLOYMENTS, "default", "bg", propagation="Background")
    wait_for(lambda: not [r for r in store.list(REPLICASETS, "default") if r["metadata"]["name"].startswith("bg-")]
             and not [p for p in store.list(PODS, "default") if p["metadata"]["labels"]["app"] == "bg"],
             what="background cascade")

    # foreground: the owner stays (with the finalizer) until its blocking dependents are gone
    store.create(DEPLOYMENTS, deployment("fg", 2))
    wait_for(lambda: len(ready_pods(store, "fg")) == 2, what="fg ready")
    store.delete(DEPLOYMENTS, "default", "fg", propagation="Foreground")
    d = store.get(DEPLOYMENTS, "default", "fg")
    assert "foregroundDeletion" in d["metadata"]["finalizers"] and d["metadata"]["deletionTimestamp"]
    owner_gone_while_pods = []
    def check():
        pods = [p for p in store.list(PODS, "default") if p["metadata"]["labels"]["app"] == "fg"]
        if store.find(DEPLOYMENTS, "default", "fg") is None and pods:
            owner_gone_while_pods.append(len(pods))
        return store.find(DEPLOYMENTS, "default", "fg") is None
    wait_for(check, what="foreground cascade")
    assert not owner_gone_while_pods

    # orphan: dependents lose their ownerReferences and stay
    store.create(DEPLOYMENTS, deployment("or", 1))
    wait_for(lambda: len(ready_pods(store, "or")) == 1, what="or ready")
    store.delete(DEPLOYMENTS, "default", "or", propagation="Orphan")
    wait_for(lambda: store.find(DEPLOYMENTS, "default", "or") is None, what="owner gone")
    rs = [r for r in store.list(REPLICASETS, "default") if r["metadata"]["name"].startswith("or-")]
    assert len(rs) == 1 and not rs[0]["metadata"].get("ownerReferences")
    assert len(ready_pods(store, "or")) == 1


def test_endpoints_and_slices_follow_pod_readiness(cluster):
    store, _ = cluster
    body = deployment("web", 2)
    body["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    store.create(DEPLOYMENTS, body)
    store.create(SERVICES, {"metadata": {"name": "web", "namespace": "default"},
                            "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})
    wait_for(lambda: len(((store.find(ENDPOINTS, "default", "web") or {}).get("subsets") or [{}])[0].get("addresses", [])) == 2,
             what="endpoints")
    subset = store.get(ENDPOINTS, "default", "web")["subsets"][0]
    assert subset["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP"}]
    assert {a["targetRef"]["kind"] for a in subset["addresses"]} == {"Pod"}
    slices = store.list(ENDPOINTSLICES, "default")
    assert len(slices) == 1 and slices[0]["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert slices[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert all(e["conditions"]["ready"] for e in slices[0]["endpoints"])
    victim = ready_pods(store, "web")[0]
    store.delete(PODS, "default", victim["metadata"]["name"])
    wait_for(lambda: victim["status"]["podIP"] not in [a["ip"] for s in store.get(ENDPOINTS, "default", "web")
                                                        .get("subsets", []) for a in s.get("addresses", [])],
             timeout=0.5, interval=0.002, what="endpoint dropped promptly")
    survivor = next(p for p in ready_pods(store, "web") if p["metadata"]["uid"] != victim["metadata"]["uid"])
    store.delete(PODS, "default", survivor["metadata"]["name"], grace_period=0)   # force: gone at once
    wait_for(lambda: survivor["status"]["podIP"] not in [a["ip"] for s in store.get(ENDPOINTS, "default", "web")
                                                          .get("subsets", []) for a in s.get("addresses", [])],
             timeout=0.5, interval=0.002, what="force-deleted endpoint dropped")
    store.delete(SERVICES, "default", "web")
    wait_for(lambda: store.find(ENDPOINTS, "default", "web") is None and not store.list(ENDPOINTSLICES, "default"),
             what="endpoints removed with the service")


def test_namespace_deletion_and_default_service_account(cluster):
    store, _ = cluster
    store.create(NAMESPACES, {"metadata": {"name": "team"}})
    wait_for(lambda: store.find(SERVICEACCOUNTS, "team", "default") is not None, what="default SA")
    body = deployment("x", 1)
    body["metadata"]["namespace"] = "team"
    store.create(DEPLOYMENTS, body)
    wait_for(lambda: any(ready(p) for p in store.list(PODS, "team")), what="pod in team")
    store.delete(NAMESPACES, None, "team")
    wait_for(lambda: store.find(NAMESPACES, None, "team") is None, what="namespace removed")
    assert not store.list(PODS, "team") and not store.list(REPLICASETS, "team")


def test_read_write_once_network_volume_attaches_to_one_node_and_in_use_claims_are_protected(cluster):
    store, _ = cluster
    store.create(PVCS, claim("shared"))
    first = pod_with_claim("first", "shared")
    first["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node1"}
    store.create(PODS, first)
    wait_for(lambda: ready(store.get(PODS, "default", "first")), what="first ready")
    second = pod_with_claim("second", "shared")
    second["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node2"}
    store.create(PODS, second)
    pv_name = store.get(PVCS, "default", "shared")["spec"]["volumeName"]
    expected = f'Multi-Attach error for volume "{pv_name}" Volume is already used by pod(s) first'
    wait_for(lambda: any(e["reason"] == "FailedAttachVolume" and e["message"] == expected
                         for e in store.list(EVENTS, "default")), what="multi-attach error")
    waiting = store.get(PODS, "default", "second")["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"
    store.delete(PODS, "default", "first")
    wait_for(lambda: ready(store.get(PODS, "default", "second")), what="second runs once first is gone")

    store.delete(PVCS, "default", "shared")
    pvc = store.get(PVCS, "default", "shared")
    assert pvc["metadata"]["deletionTimestamp"] and "kubernetes.io/pvc-protection" in pvc["metadata"]["finalizers"]
    store.delete(PODS, "default", "second")
    wait_for(lambda: store.find(PVCS, "default", "shared") is None and store.find(PVS, None, pv_name) is None,
             what="claim and volume gone after the last user")


def test_statefulset_parallel_start_and_ordered_scale_down(cluster):
    store, _ = cluster
    def sts(name, policy):
        return {"metadata": {"name": name, "namespace": "default"},
                "spec": {"replicas": 3, "serviceName": name, "podManagementPolicy": policy,
                         "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "c", "image": "demo/app:1"}]}}}}
    watch = store.watch(PODS, "default", since_rv=store.resource_version)
    store.create(STATEFULSETS, sts("par", "Parallel"))
    wait_for(lambda: len([p for p in store.list(PODS, "default") if p["metadata"]["name"].startswith("par-")]) == 3,
             timeout=1, what="all three created at once")
    wait_for(lambda: store.get(STATEFULSETS, "default", "par").get("status", {}).get("readyReplicas") == 3, what="ready")
    watch.close()

    store.create(STATEFULSETS, sts("ord", "OrderedReady"))
    wait_for(lambda: store.get(STATEFULSETS, "default", "ord").get("status", {}).get("readyReplicas") == 3, what="ready")
    watch = store.watch(PODS, "default", since_rv=store.resource_version)
    store.mutate(STATEFULSETS, "default", "ord", lambda s: s["spec"].update(replicas=1))
    wait_for(lambda: store.get(STATEFULSETS, "default", "ord")["status"].get("replicas") == 1
             and store.find(PODS, "default", "ord-1") is None, what="scaled down")
    removed = []
    while (event := watch.next(timeout=0.05)) is not None:
        if event.type == "DELETED":
            removed.append(event.object["metadata"]["name"])
    watch.close()
    assert removed == ["ord-2", "ord-1"]
