"""`airflow dags test node_maintenance` / `end_maintenance` against kubesim, with apps created by the client."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
from kubernetes.client import AppsV1Api, CoreV1Api, PolicyV1Api

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))

from k8smove import availability  # noqa: E402
from k8smove.maintenance import EXCLUSION_ANNOTATION  # noqa: E402
from k8smove.verify import verify_endpoint  # noqa: E402
from kubesim_release import unique_external_ip  # noqa: E402

pytestmark = pytest.mark.slow

MANAGED = {"app.kubernetes.io/managed-by": "k8smove"}
PROBE_RATE = 20.0


@pytest.fixture
def dags_test(airflow_cli, cluster):
    def run(dag_id: str, conf: dict):
        return airflow_cli("dags", "test", dag_id, "--conf", json.dumps(conf), kubeconfig=cluster.kubeconfig_path)
    return run


def pod_template(name: str, labels: dict, **spec) -> dict:
    """A web server as one runs behind a Service: Ready when it answers, and a preStop pause so the Service
    stops sending it requests before it stops (the endpoints update races the stop signal otherwise)."""
    return {"metadata": {"labels": {"app": name, **labels}}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1},
                        "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}],
        **spec}}


def create_deployment(kube_client, name: str, replicas: int, labels: dict = MANAGED, **spec) -> None:
    AppsV1Api(kube_client).create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": pod_template(name, labels, **spec)}})


def create_statefulset(kube_client, name: str, storage_class: str) -> None:
    template = pod_template(name, MANAGED)
    template["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    AppsV1Api(kube_client).create_namespaced_stateful_set("default", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "labels": MANAGED},
        "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                 "template": template,
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                     "storageClassName": storage_class, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}}]}})


def create_pdb(kube_client, name: str, min_available: int) -> None:
    PolicyV1Api(kube_client).create_namespaced_pod_disruption_budget("default", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": name}}}})


def expose(kube_client, name: str) -> str:
    """A Service on a loopback address of its own; returns its URL."""
    ip = unique_external_ip()
    CoreV1Api(kube_client).create_namespaced_service("default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "externalIPs": [ip], "ports": [{"port": 8080, "targetPort": 80}]}})
    return f"http://{ip}:8080/"


def set_node(kube_client, node: str, labels: dict | None = None, unschedulable: bool | None = None) -> None:
    patch = {"metadata": {"labels": labels}} if labels else {}
    if unschedulable is not None:
        patch["spec"] = {"unschedulable": unschedulable or None}
    CoreV1Api(kube_client).patch_node(node, patch)


def wait_all_ready(kube_client, timeout: float = 60) -> None:
    """Every pod the default namespace's Deployments and StatefulSets ask for exists and is Ready (bounded): on the
    real control plane their controllers create the pods after the workloads, so "every pod there is Ready" can
    hold before the last pod exists."""
    from waiting import wait_for

    def not_ready():
        apps = AppsV1Api(kube_client)
        wanted = sum(w.spec.replicas or 0 for w in apps.list_namespaced_deployment("default").items +
                     apps.list_namespaced_stateful_set("default").items)
        pods = [p for p in CoreV1Api(kube_client).list_namespaced_pod("default").items
                if not p.metadata.deletion_timestamp]
        waiting = [p.metadata.name for p in pods
                   if not any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        owned = [p for p in pods if p.metadata.owner_references]   # a bare pod does not stand in for a missing one
        return waiting + [f"{wanted - len(owned)} pod(s) not created yet"] * (len(owned) < wanted)
    wait_for(lambda: not not_ready(), timeout, 0.2, "every pod of the default namespace created and Ready")


def pods_on(kube_client, node: str) -> list[str]:
    return sorted(f"{p.metadata.namespace}/{p.metadata.name}"
                  for p in CoreV1Api(kube_client).list_pod_for_all_namespaces().items if p.spec.node_name == node)


def start_on_node1(kube_client, create) -> None:
    """Run ``create`` while node2 is cordoned, so every pod lands on node1; then mark node1 for maintenance."""
    set_node(kube_client, "node2", unschedulable=True)
    create()
    wait_all_ready(kube_client)
    set_node(kube_client, "node2", unschedulable=False)
    set_node(kube_client, "node1", labels={"maintenance": "scheduled"})


class Probes:
    """availability.run at PROBE_RATE GET/s against each URL, each in its own thread, while a block runs."""

    def __init__(self, urls: list[str]):
        self.stop = threading.Event()
        self.records = {url: availability.ProbeRecord() for url in urls}
        self.threads = [threading.Thread(target=availability.run, args=(url, PROBE_RATE, 0, self.stop, record))
                        for url, record in self.records.items()]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_node_is_evacuated_without_a_failed_request_then_brought_back(cluster, kube_client, dags_test):
    urls = {}

    def create():
        create_deployment(kube_client, "web-one", 1)
        create_deployment(kube_client, "web-one-pdb", 1)
        create_pdb(kube_client, "web-one-pdb", 1)
        create_deployment(kube_client, "web-two", 2)
        create_pdb(kube_client, "web-two", 1)
        create_statefulset(kube_client, "db", "standard")
        create_deployment(kube_client, "other", 1, labels={"team": "other"})
        create_deployment(kube_client, "extra", 1, labels={"team": "extra"})
        urls.update({name: expose(kube_client, name) for name in ("web-one", "web-one-pdb", "web-two")})
    start_on_node1(kube_client, create)
    before = pods_on(kube_client, "node1")
    assert len(before) == 7
    conf = {"extra_selector": {"team": "extra"}}     # moved like k8smove's own; "other" is only evicted

    # The dry run logs the plan and writes nothing.
    CoreV1Api(kube_client).read_namespace("default")   # kubesim logs a request after answering it
    cluster.clear_request_log()
    dry = dags_test("node_maintenance", {**conf, "dry_run": True})
    assert dry.returncode == 0, dry.stdout[-5000:]
    assert cluster.writes() == []
    for line in ("move surge    Deployment default/web-one ", "move surge    Deployment default/web-two ",
                 "move recreate StatefulSet default/db ", "move surge    Deployment default/extra ",
                 "evict    pod default/other-"):
        assert line in dry.stdout, dry.stdout[-5000:]
    assert pods_on(kube_client, "node1") == before

    with Probes(list(urls.values())) as probes:
        result = dags_test("node_maintenance", conf)
    assert result.returncode == 0, result.stdout[-8000:]
    for url, record in probes.records.items():
        summary = record.summary(record.started)
        assert summary["sent"] >= 20 and summary["failed"] == 0, (url, summary["errors"], summary)
    assert pods_on(kube_client, "node1") == []
    assert len(pods_on(kube_client, "node2")) == 7 and "default/db-0" in pods_on(kube_client, "node2")
    assert "map_index=4" in result.stdout          # one mapped move per workload: 4 web Deployments and db
    node1 = CoreV1Api(kube_client).read_node("node1")
    assert node1.spec.unschedulable and node1.metadata.labels["maintenance"] == "ready"
    web_two = AppsV1Api(kube_client).read_namespaced_deployment("web-two", "default")
    assert web_two.metadata.annotations[EXCLUSION_ANNOTATION]
    for url in urls.values():
        assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node2"

    back = dags_test("end_maintenance", {})
    assert back.returncode == 0, back.stdout[-5000:]
    node1 = CoreV1Api(kube_client).read_node("node1")
    assert not node1.spec.unschedulable and "maintenance" not in (node1.metadata.labels or {})
    web_two = AppsV1Api(kube_client).read_namespaced_deployment("web-two", "default")
    assert EXCLUSION_ANNOTATION not in (web_two.metadata.annotations or {})
    assert web_two.spec.template.spec.affinity is None        # as before the maintenance, not an empty struct


def test_what_cannot_leave_is_refused_by_the_plan_before_any_write(cluster, kube_client, dags_test):
    def create():
        create_statefulset(kube_client, "local-db", "local-path")
        create_deployment(kube_client, "scratch", 1, labels={"team": "other"},
                          volumes=[{"name": "tmp", "emptyDir": {}}])
        create_deployment(kube_client, "pinned", 1, nodeSelector={"demo": "node1"})
    set_node(kube_client, "node1", labels={"demo": "node1"})
    set_node(kube_client, "node2", labels={"demo": "node2"})
    start_on_node1(kube_client, create)
    before = pods_on(kube_client, "node1")
    CoreV1Api(kube_client).read_namespace("default")   # kubesim logs a request after answering it
    cluster.clear_request_log()

    for conf in ({"target_selector": {"demo": "node2"}, "dry_run": True}, {"target_selector": {"demo": "node2"}}):
        result = dags_test("node_maintenance", conf)
        assert result.returncode != 0, result.stdout[-8000:]   # a dry run that refuses something ends red too
        out = result.stdout
        assert "The plan cannot empty node1: " in out, out[-8000:]
        assert ("StatefulSet default/local-db (default/local-db-0): on node-local storage (pod local-db-0: "
                "PersistentVolumeClaim data-local-db-0 on node-local volume") in out, out[-8000:]
        assert "uses local storage (emptyDir tmp)" in out
        # The exclusion is ANDed with the workload's own nodeSelector: the plan says so instead of a Pending pod.
        assert ("Deployment default/pinned (default/pinned-" in out and
                "fits on no node outside maintenance: node2: not labelled demo=node1" in out), out[-8000:]
    assert cluster.writes() == []
    assert pods_on(kube_client, "node1") == before
    assert not CoreV1Api(kube_client).read_node("node1").spec.unschedulable


def test_selectors_that_select_no_node_or_every_node_are_refused_by_the_plan_before_any_write(cluster, kube_client,
                                                                                               dags_test):
    set_node(kube_client, "node1", labels={"demo": "node1"})
    set_node(kube_client, "node2", labels={"demo": "node2"})
    CoreV1Api(kube_client).read_namespace("default")   # kubesim logs a request after answering it
    cluster.clear_request_log()
    for conf, message in (
            ({"maintenance_label": {"maintenance": "now"}},
             "maintenance_label maintenance=now matches no node (nodes: node1, node2): nothing to take into "
             "maintenance"),
            ({"maintenance_label": {"kubernetes.io/os": "linux"}},
             "maintenance_label kubernetes.io/os=linux matches every node (node1, node2): none would be left to "
             "move the workloads to"),
            ({"maintenance_label": {"demo": "node1"}, "target_selector": {"demo": "node3"}},
             "target_selector demo=node3 matches no node: no Ready, schedulable node labelled demo=node3 outside "
             "maintenance (node1)")):
        result = dags_test("node_maintenance", conf)
        assert result.returncode != 0 and message in result.stdout, result.stdout[-8000:]
    assert cluster.writes() == []


def test_what_a_budget_protects_is_reported_not_forced_and_the_run_fails(cluster, kube_client, dags_test):
    start_on_node1(kube_client, lambda: (create_deployment(kube_client, "guarded", 1, labels={"team": "other"}),
                                         create_pdb(kube_client, "guarded", 1)))
    before = pods_on(kube_client, "node1")
    result = dags_test("node_maintenance", {"eviction_timeout_seconds": 5})
    assert result.returncode != 0
    out = result.stdout
    guarded = next(p for p in before if p.startswith("default/guarded-"))
    left = out[out.index("1 pod(s) left"):][:2000]
    assert (f"{guarded} on node1: eviction refused: Cannot evict pod as it would violate the pod's disruption "
            f"budget. The disruption budget guarded needs 1 healthy pods and has 1 currently") in left, left
    assert pods_on(kube_client, "node1") == before      # nothing forced, nothing lost
    assert CoreV1Api(kube_client).read_node("node1").metadata.labels["maintenance"] == "scheduled"


def test_a_move_that_times_out_ends_fully_back(cluster, kube_client, dags_test):
    start_on_node1(kube_client, lambda: create_deployment(kube_client, "slow", 1))
    before = pods_on(kube_client, "node1")
    cluster.faults.add("slow-startup", node="node2", seconds=120)      # the surge pod never gets Ready
    result = dags_test("node_maintenance", {"timeout_seconds": 10})
    assert result.returncode != 0
    assert "Rollout not complete after 10s: Deployment slow" in result.stdout, result.stdout[-8000:]
    assert "did not move: its exclusion is lifted again" in result.stdout
    slow = AppsV1Api(kube_client).read_namespaced_deployment("slow", "default")
    assert EXCLUSION_ANNOTATION not in (slow.metadata.annotations or {})
    assert slow.spec.template.spec.affinity is None
    wait_all_ready(kube_client, timeout=30)
    assert pods_on(kube_client, "node1") == before                       # the same pod, still serving
    assert [p.status.phase for p in CoreV1Api(kube_client).list_namespaced_pod("default").items] == ["Running"]
    # What a failed run leaves, end_maintenance with the documented conf brings back.
    back = dags_test("end_maintenance", {"maintenance_label": {"maintenance": "scheduled"}})
    assert back.returncode == 0, back.stdout[-5000:]
    node1 = CoreV1Api(kube_client).read_node("node1")
    assert not node1.spec.unschedulable and "maintenance" not in (node1.metadata.labels or {})
