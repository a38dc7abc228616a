"""Deployments through ReplicaSets, scheduler and kubelets: rolling moves between nodes keep every
replica serving, Recreate empties first, rollout status fields and events read like upstream."""
from __future__ import annotations

import threading

import pytest

from kubesim.resources import DEPLOYMENTS, EVENTS, PODS, REPLICASETS
from kubesim.store import DELETED

from controller_harness import cluster, wait_for  # noqa: F401  (cluster: the fixture)



def deployment(name="web", replicas=3, node="node1", strategy=None):
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "strategy": strategy or {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                                           "containers": [{"name": "app", "image": "demo/app:1"}]}}}}


def rolled_out(store, name="web"):
    d = store.get(DEPLOYMENTS, "default", name)
    s = d.get("status", {})
    want = d["spec"]["replicas"]
    return (s.get("observedGeneration") == d["metadata"]["generation"] and s.get("updatedReplicas", 0) == want
            and s.get("replicas", 0) == want and s.get("availableReplicas", 0) == want)


def serving(pod) -> bool:
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
    return ready and not pod["metadata"].get("deletionTimestamp")


class ReadyCounter:
    """Watches pods of one app and records the smallest number of Ready, non-terminating pods seen."""

    def __init__(self, store, app):
        pods, rv = store.snapshot(PODS, "default")
        self.app = app
        self.ready = {p["metadata"]["uid"]: p["spec"].get("nodeName") for p in pods
                      if p["metadata"].get("labels", {}).get("app") == app and serving(p)}
        self.minimum = len(self.ready)
        self.watch = store.watch(PODS, "default", since_rv=rv)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            event = self.watch.next(timeout=0.5)
            if self.watch.closed:
                return
            if event is None or event.object["metadata"].get("labels", {}).get("app") != self.app:
                continue
            uid = event.object["metadata"]["uid"]
            if event.type == DELETED or not serving(event.object):
                self.ready.pop(uid, None)
            else:
                self.ready[uid] = event.object["spec"].get("nodeName")
            self.minimum = min(self.minimum, len(self.ready))

    def stop(self):
        self.watch.close()
        self.thread.join(timeout=2)


def test_node_selector_change_moves_every_pod_without_dropping_below_replicas(cluster):
    store, _ = cluster
    store.create(DEPLOYMENTS, deployment())
    wait_for(lambda: rolled_out(store), what="initial rollout")
    assert {p["spec"]["nodeName"] for p in store.list(PODS, "default")} == {"node1"}

    counter = ReadyCounter(store, "web")
    store.mutate(DEPLOYMENTS, "default", "web",
                 lambda d: d["spec"]["template"]["spec"].update(nodeSelector={"kubernetes.io/hostname": "node2"}))
    wait_for(lambda: rolled_out(store) and len(store.list(PODS, "default")) == 3, what="rollout to node2")
    counter.stop()

    pods = store.list(PODS, "default")
    assert {p["spec"]["nodeName"] for p in pods} == {"node2"}
    assert counter.minimum >= 3
    d = store.get(DEPLOYMENTS, "default", "web")
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    progressing = next(c for c in d["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetAvailable"
    new_rs = next(rs for rs in store.list(REPLICASETS, "default") if rs["spec"]["replicas"] == 3)
    assert progressing["message"] == f'ReplicaSet "{new_rs["metadata"]["name"]}" has successfully progressed.'
    messages = [e["message"] for e in store.list(EVENTS, "default") if e["reason"] == "ScalingReplicaSet"]
    assert f"Scaled up replica set {new_rs['metadata']['name']} from 0 to 1" in messages
    assert any(m.startswith("Scaled down replica set web-") and m.endswith("from 3 to 2") for m in messages)


def test_recreate_scales_old_pods_to_zero_before_starting_new_ones(cluster):
    store, _ = cluster
    store.create(DEPLOYMENTS, deployment("db", replicas=2, strategy={"type": "Recreate"}))
    wait_for(lambda: rolled_out(store, "db"), what="initial rollout")
    old_uids = {p["metadata"]["uid"] for p in store.list(PODS, "default")}

    seen_new_while_old_exist = []
    watch = store.watch(PODS, "default", since_rv=store.resource_version)
    existing_old = set(old_uids)
    store.mutate(DEPLOYMENTS, "default", "db",
                 lambda d: d["spec"]["template"]["spec"].update(nodeSelector={"kubernetes.io/hostname": "node2"}))
    wait_for(lambda: rolled_out(store, "db") and len(store.list(PODS, "default")) == 2, what="recreate rollout")
    while (event := watch.next(timeout=0.1)) is not None:
        uid = event.object["metadata"]["uid"]
        if event.type == DELETED:
            existing_old.discard(uid)
        elif uid not in old_uids and existing_old:
            seen_new_while_old_exist.append(event.object["metadata"]["name"])
    watch.close()
    assert not seen_new_while_old_exist
    assert {p["spec"]["nodeName"] for p in store.list(PODS, "default")} == {"node2"}


def test_rollback_reuses_the_old_replicaset_and_bumps_its_revision(cluster):
    store, _ = cluster
    store.create(DEPLOYMENTS, deployment(replicas=1))
    wait_for(lambda: rolled_out(store), what="rollout 1")
    first = store.list(REPLICASETS, "default")[0]["metadata"]["name"]
    set_image = lambda image: store.mutate(DEPLOYMENTS, "default", "web", lambda d: d["spec"]["template"]["spec"]
                                           ["containers"][0].update(image=image))
    set_image("demo/app:2")
    wait_for(lambda: rolled_out(store) and len(store.list(PODS, "default")) == 1, what="rollout 2")
    set_image("demo/app:1")
    wait_for(lambda: rolled_out(store) and len(store.list(PODS, "default")) == 1, what="rollback")
    rss = {rs["metadata"]["name"]: rs for rs in store.list(REPLICASETS, "default")}
    assert len(rss) == 2
    assert rss[first]["spec"]["replicas"] == 1
    assert rss[first]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_unschedulable_rollout_reports_progress_and_availability_like_upstream(cluster):
    store, _ = cluster
    store.create(DEPLOYMENTS, deployment(replicas=2, node="nowhere"))
    wait_for(lambda: store.get(DEPLOYMENTS, "default", "web").get("status", {}).get("unavailableReplicas") == 2,
             what="status")
    status = store.get(DEPLOYMENTS, "default", "web")["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Available"]["reason"] == "MinimumReplicasUnavailable"
    assert conditions["Available"]["message"] == "Deployment does not have minimum availability."
    assert conditions["Progressing"]["reason"] in ("NewReplicaSetCreated", "ReplicaSetUpdated")
    assert status.get("availableReplicas", 0) == 0 and status["updatedReplicas"] == 2


def test_progress_deadline_exceeded(cluster):
    store, _ = cluster
    body = deployment(replicas=1, node="nowhere")
    body["spec"]["progressDeadlineSeconds"] = 1
    store.create(DEPLOYMENTS, body)
    wait_for(lambda: any(c["reason"] == "ProgressDeadlineExceeded" for c in store.get(DEPLOYMENTS, "default", "web")
                         .get("status", {}).get("conditions", [])), timeout=6, what="deadline")
    cond = next(c for c in store.get(DEPLOYMENTS, "default", "web")["status"]["conditions"] if c["type"] == "Progressing")
    assert cond["status"] == "False" and cond["message"].endswith("has timed out progressing.")


def test_scale_down_prefers_unready_pods_and_history_is_trimmed(cluster):
    store, _ = cluster
    body = deployment(replicas=2)
    body["spec"]["revisionHistoryLimit"] = 1
    store.create(DEPLOYMENTS, body)
    wait_for(lambda: rolled_out(store), what="rollout")
    for image in ("demo/app:2", "demo/app:3"):
        store.mutate(DEPLOYMENTS, "default", "web",
                     lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image=image))
        wait_for(lambda: rolled_out(store) and len(store.list(PODS, "default")) == 2, what=f"rollout {image}")
    wait_for(lambda: len(store.list(REPLICASETS, "default")) == 2, what="history trimmed to 1 old RS")


def test_paused_deployment_does_not_roll_out_until_resumed(cluster):
    store, _ = cluster
    store.create(DEPLOYMENTS, deployment(replicas=2))
    wait_for(lambda: rolled_out(store), what="rollout")
    store.mutate(DEPLOYMENTS, "default", "web", lambda d: d["spec"].update(paused=True))
    store.mutate(DEPLOYMENTS, "default", "web",
                 lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="demo/app:2"))
    progressing = lambda: next(c for c in store.get(DEPLOYMENTS, "default", "web")["status"]["conditions"]
                               if c["type"] == "Progressing")
    wait_for(lambda: progressing()["reason"] == "DeploymentPaused", what="paused condition")
    assert progressing()["message"] == "Deployment is paused"
    assert len(store.list(REPLICASETS, "default")) == 1
    store.mutate(DEPLOYMENTS, "default", "web", lambda d: d["spec"].update(paused=False))
    wait_for(lambda: rolled_out(store) and len(store.list(REPLICASETS, "default")) == 2
             and all(p["spec"]["containers"][0]["image"] == "demo/app:2" for p in store.list(PODS, "default")),
             what="rollout after resume")
