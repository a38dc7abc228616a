"""Whole-cluster conformance: the real kubectl and the real kubernetes client against a full two-node
Cluster (API server, controllers, real processes, real service proxies)."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest
from cluster_support import (RECREATE, SURGE, PodWatch, deployment, dump, kubectl, pods_of, ready_pods, service,
                             wait_for, wait_rolled_out)
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubesim.resources import CONFIGMAPS, DEPLOYMENTS, NODES, PVS, PODS

NO_MATCH = "didn't match Pod's node affinity/selector"


def rows(output: str) -> list[dict]:
    """kubectl's table output as dicts keyed by the header (columns are separated by 2+ spaces)."""
    import re
    lines = [line for line in output.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, re.split(r"\s{2,}", line.strip()))) for line in lines[1:]]


def http_get(ip: str, port: int = 80) -> dict:
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=3) as resp:
        return json.loads(resp.read())


# ---- nodes -------------------------------------------------------------------------------------------------
def test_get_nodes_wide_label_cordon_uncordon(cluster):
    table = rows(kubectl(cluster, "get", "nodes", "-o", "wide").stdout)
    assert [r["NAME"] for r in table] == ["node1", "node2"]
    for row in table:
        node = cluster.store.get(NODES, None, row["NAME"])
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert row["STATUS"] == "Ready"
        assert row["INTERNAL-IP"] == internal[0] and row["INTERNAL-IP"].startswith("127.")

    assert "node/node1 labeled" in kubectl(cluster, "label", "node", "node1", "zone=blue").stdout
    shown = rows(kubectl(cluster, "get", "nodes", "-l", "zone=blue").stdout)
    assert [r["NAME"] for r in shown] == ["node1"]

    assert "node/node1 cordoned" in kubectl(cluster, "cordon", "node1").stdout
    status = {r["NAME"]: r["STATUS"] for r in rows(kubectl(cluster, "get", "nodes").stdout)}
    assert status == {"node1": "Ready,SchedulingDisabled", "node2": "Ready"}
    assert cluster.store.get(NODES, None, "node1")["spec"].get("unschedulable") is True

    assert "node/node1 uncordoned" in kubectl(cluster, "uncordon", "node1").stdout
    status = {r["NAME"]: r["STATUS"] for r in rows(kubectl(cluster, "get", "nodes").stdout)}
    assert status == {"node1": "Ready", "node2": "Ready"}


# ---- apply, rollout --------------------------------------------------------------------------------------
def test_apply_server_side_and_client_side_then_rollout_status(cluster):
    out = kubectl(cluster, "apply", "--server-side", "-f", "-",
                  input=dump(deployment("ssa", replicas=2), service("ssa"))).stdout
    assert "deployment.apps/ssa serverside-applied" in out and "service/ssa serverside-applied" in out
    proc = kubectl(cluster, "rollout", "status", "deployment/ssa", "--timeout=30s")
    assert 'deployment "ssa" successfully rolled out' in proc.stdout
    assert len(ready_pods(cluster, "ssa")) == 2

    manifest = dump(deployment("csa", replicas=1), service("csa"))
    first = kubectl(cluster, "apply", "-f", "-", input=manifest).stdout
    assert "deployment.apps/csa created" in first and "service/csa created" in first
    second = kubectl(cluster, "apply", "-f", "-", input=manifest).stdout
    assert "deployment.apps/csa unchanged" in second and "service/csa unchanged" in second
    wait_rolled_out(cluster, "csa")
    assert len(ready_pods(cluster, "csa")) == 1


def test_rollout_undo_returns_to_the_previous_image(cluster):
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("undo", replicas=2, image="nginx:1.27")))
    wait_rolled_out(cluster, "undo")
    kubectl(cluster, "set", "image", "deployment/undo", "web=nginx:1.28")
    wait_rolled_out(cluster, "undo")
    wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in pods_of(cluster, "undo")} == {"nginx:1.28"},
             what="only nginx:1.28 pods")
    assert {http_get(p["status"]["podIP"])["image"] for p in ready_pods(cluster, "undo")} == {"nginx:1.28"}

    out = kubectl(cluster, "rollout", "undo", "deployment/undo").stdout
    assert "deployment.apps/undo rolled back" in out
    wait_rolled_out(cluster, "undo")
    wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in pods_of(cluster, "undo")} == {"nginx:1.27"},
             what="only nginx:1.27 pods after undo")
    ready = ready_pods(cluster, "undo")
    assert len(ready) == 2
    # the processes behind the pods really run the old image (the responder answers with its IMAGE)
    assert {http_get(p["status"]["podIP"])["image"] for p in ready} == {"nginx:1.27"}
    dep = cluster.store.get(DEPLOYMENTS, "default", "undo")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_patch_merge_json_and_strategic(cluster):
    dep = deployment("pt", replicas=1)
    dep["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    kubectl(cluster, "apply", "-f", "-", input=dump(dep))

    out = kubectl(cluster, "patch", "deployment", "pt", "--type", "merge",
                  "-p", '{"metadata":{"labels":{"tier":"front"}}}').stdout
    assert "deployment.apps/pt patched" in out
    assert cluster.store.get(DEPLOYMENTS, "default", "pt")["metadata"]["labels"] == {"app": "pt", "tier": "front"}

    kubectl(cluster, "patch", "deployment", "pt", "--type", "json",
            "-p", '[{"op":"replace","path":"/spec/replicas","value":2},'
                  '{"op":"remove","path":"/metadata/labels/tier"}]')
    stored = cluster.store.get(DEPLOYMENTS, "default", "pt")
    assert stored["spec"]["replicas"] == 2 and stored["metadata"]["labels"] == {"app": "pt"}

    # strategic: containers merge by name, env by name: B is added, A, image and ports stay
    kubectl(cluster, "patch", "deployment", "pt", "--type", "strategic",
            "-p", '{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"B","value":"2"}]}]}}}}')
    container = cluster.store.get(DEPLOYMENTS, "default", "pt")["spec"]["template"]["spec"]["containers"]
    assert len(container) == 1
    assert container[0]["image"] == "nginx:1.27" and container[0]["ports"][0]["containerPort"] == 80
    assert [e["name"] for e in container[0]["env"]] == ["B", "A"]

    # a merge patch replaces the list instead (RFC 7386)
    kubectl(cluster, "patch", "deployment", "pt", "--type", "merge",
            "-p", '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.28"}]}}}}')
    container = cluster.store.get(DEPLOYMENTS, "default", "pt")["spec"]["template"]["spec"]["containers"]
    assert container[0]["image"] == "nginx:1.28" and "env" not in container[0]
    wait_rolled_out(cluster, "pt")
    assert len(ready_pods(cluster, "pt")) == 2


def test_get_pods_wide_with_field_selector_on_node(cluster):
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("spread", replicas=4)))
    wait_rolled_out(cluster, "spread")
    on_node1 = sorted(p["metadata"]["name"] for p in pods_of(cluster, "spread") if p["spec"]["nodeName"] == "node1")
    assert on_node1, "the scheduler should spread 4 replicas over both nodes"
    table = rows(kubectl(cluster, "get", "pods", "-o", "wide", "--field-selector", "spec.nodeName=node1").stdout)
    assert sorted(r["NAME"] for r in table) == on_node1
    for row in table:
        pod = cluster.store.get(PODS, "default", row["NAME"])
        assert row["NODE"] == "node1" and row["STATUS"] == "Running" and row["READY"] == "1/1"
        assert row["IP"] == pod["status"]["podIP"]


def test_describe_pending_pod_shows_failed_scheduling(cluster):
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("lost", replicas=1, nodeSelector={"disk": "ssd"})))
    name = wait_for(lambda: [p["metadata"]["name"] for p in pods_of(cluster, "lost")], what="pod created")[0]
    wait_for(lambda: "FailedScheduling" in kubectl(cluster, "describe", "pod", name).stdout, what="FailedScheduling")
    out = " ".join(kubectl(cluster, "describe", "pod", name).stdout.split())   # describe aligns with tabs
    assert "Status: Pending" in out
    assert "Node: <none>" in out
    assert "Node-Selectors: disk=ssd" in out
    assert "PodScheduled False" in out
    assert (f"Warning FailedScheduling ") in out and " default-scheduler " in out
    assert (f"0/2 nodes are available: 2 node(s) {NO_MATCH}. preemption: 0/2 nodes are available: "
            "2 Preemption is not helpful for scheduling.") in out


# ---- drain with a PodDisruptionBudget ----------------------------------------------------------------------
PDB = """
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: guarded}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: guarded}}
"""


def test_drain_blocked_by_pdb_then_allowed(cluster):
    kubectl(cluster, "cordon", "node2")   # both replicas start on node1; node2 is free again for the drain
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("guarded", replicas=2)))
    wait_rolled_out(cluster, "guarded")
    assert {p["spec"]["nodeName"] for p in pods_of(cluster, "guarded")} == {"node1"}
    kubectl(cluster, "uncordon", "node2")
    kubectl(cluster, "apply", "-f", "-", input=PDB)
    wait_for(lambda: kubectl(cluster, "get", "pdb", "guarded", "-o",
                             "jsonpath={.status.disruptionsAllowed}/{.status.currentHealthy}").stdout == "0/2",
             what="PDB with 0 disruptions allowed")

    started = time.monotonic()
    blocked = kubectl(cluster, "drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5s",
                      check=False)
    assert blocked.returncode != 0
    assert "node/node1 cordoned" in blocked.stdout
    assert "Cannot evict pod as it would violate the pod's disruption budget" in blocked.stderr
    assert "global timeout reached: 5s" in blocked.stderr
    assert 4.5 < time.monotonic() - started < 20
    assert {p["spec"]["nodeName"] for p in pods_of(cluster, "guarded")} == {"node1"}
    assert len(ready_pods(cluster, "guarded")) == 2

    kubectl(cluster, "patch", "pdb", "guarded", "--type", "merge", "-p", '{"spec":{"minAvailable":1}}')
    drained = kubectl(cluster, "drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
                      timeout=90)
    assert "node/node1 drained" in drained.stdout
    assert drained.stdout.count("evicted") == 2
    assert not [p for p in pods_of(cluster, "guarded") if p["spec"].get("nodeName") == "node1"]
    wait_for(lambda: len(ready_pods(cluster, "guarded", node="node2")) == 2, what="2 ready pods on node2")
    table = rows(kubectl(cluster, "get", "pods", "-o", "wide", "-l", "app=guarded").stdout)
    assert {r["NODE"] for r in table} == {"node2"}
    kubectl(cluster, "delete", "pdb", "guarded")
    kubectl(cluster, "uncordon", "node1")


# ---- delete, logs, events ----------------------------------------------------------------------------------
def test_logs_events_and_delete(cluster):
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("talk", replicas=1), service("talk")))
    wait_rolled_out(cluster, "talk")
    pod = ready_pods(cluster, "talk")[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert http_get(ip)["pod"] == name
    wait_for(lambda: '"GET / HTTP/1.1" 200' in kubectl(cluster, "logs", name).stdout, what="GET in logs")
    logs = kubectl(cluster, "logs", name).stdout
    assert f"responding on {ip}:80" in logs
    assert kubectl(cluster, "logs", "deployment/talk", "-c", "web").stdout.startswith(f"responding on {ip}:80")

    events = kubectl(cluster, "get", "events", "-o", "json").stdout
    seen = {(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"])
            for e in json.loads(events)["items"]}
    rs = pod["metadata"]["ownerReferences"][0]["name"]
    for reason in ("Scheduled", "Pulled", "Created", "Started"):
        assert ("Pod", name, reason) in seen, reason
    assert ("ReplicaSet", rs, "SuccessfulCreate") in seen
    assert ("Deployment", "talk", "ScalingReplicaSet") in seen
    # a probe that ran before the responder listened is worded like the kubelet's (Go's net errors)
    for e in json.loads(events)["items"]:
        if e["reason"] == "Unhealthy":
            ip_of = cluster.store.get(PODS, "default", e["involvedObject"]["name"])["status"]["podIP"]
            assert e["message"] == (f'Readiness probe failed: Get "http://{ip_of}:80/": dial tcp {ip_of}:80: '
                                    "connect: connection refused")
    table = kubectl(cluster, "get", "events").stdout
    assert f"Successfully assigned default/{name} to {pod['spec']['nodeName']}" in table
    wait_for(lambda: f"{ip}:80" in kubectl(cluster, "get", "endpoints", "talk").stdout, what="ready endpoint")
    described = " ".join(kubectl(cluster, "describe", "pod", name).stdout.split())
    for shown in (f"Node: {pod['spec']['nodeName']}/", f"IP: {ip}", "Status: Running", "State: Running",
                  "Ready: True", "Image: nginx:1.27", "Restart Count: 0", "Started container web"):
        assert shown in described, shown
    assert f"Scaled up replica set {rs} from 0 to 1" in table

    out = kubectl(cluster, "delete", "deployment", "talk").stdout
    assert 'deployment.apps "talk" deleted' in out
    wait_for(lambda: not pods_of(cluster, "talk"), what="pods garbage-collected")
    assert 'service "talk" deleted' in kubectl(cluster, "delete", "service", "talk").stdout
    assert "NotFound" in kubectl(cluster, "get", "deployment", "talk", check=False).stderr
    assert "No resources found" in kubectl(cluster, "get", "rs,pods", "-l", "app=talk").stderr


# ---- the kubernetes client against the whole cluster ---------------------------------------------------
def set_node_selector(apps, name: str, node: str) -> None:
    apps.patch_namespaced_deployment(name, "default", {"spec": {"template": {"spec": {
        "nodeSelector": {"kubernetes.io/hostname": node}}}}})


def test_surge_move_keeps_ready_pods_at_replicas(cluster, kube_client):
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_deployment("default", deployment("surge", replicas=3, node="node1", strategy=SURGE))
    wait_rolled_out(cluster, "surge")
    with PodWatch(kube_client, "surge") as pods:
        set_node_selector(apps, "surge", "node2")
        wait_rolled_out(cluster, "surge")
        wait_for(lambda: len(pods_of(cluster, "surge")) == 3, what="old pods gone")
    lowest, highest = 99, 0
    assert pods.listed == 3
    for _, _, _, current in pods.states():
        ready = [p for p in current.values() if PodWatch.ready(p) and not p.metadata.deletion_timestamp]
        alive = [p for p in current.values() if not p.metadata.deletion_timestamp]
        lowest, highest = min(lowest, len(ready)), max(highest, len(alive))
    assert lowest >= 3, f"Ready pods dropped to {lowest}"
    assert highest == 4, "maxSurge=1: at most 4 pods that are not terminating"
    final = pods_of(cluster, "surge")
    assert {p["spec"]["nodeName"] for p in final} == {"node2"} and len(ready_pods(cluster, "surge")) == 3
    assert sum(1 for _, kind, _ in pods.events if kind == "DELETED") == 3


def test_recreate_goes_to_zero_first(cluster, kube_client):
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_deployment("default", deployment("rec", replicas=2, node="node1", strategy=RECREATE))
    wait_rolled_out(cluster, "rec")
    old = {p["metadata"]["name"] for p in pods_of(cluster, "rec")}
    with PodWatch(kube_client, "rec") as pods:
        set_node_selector(apps, "rec", "node2")
        wait_rolled_out(cluster, "rec")
        wait_for(lambda: not old & {p["metadata"]["name"] for p in pods_of(cluster, "rec")}, what="old pods gone")
    first_new = None
    for at, kind, pod, current in pods.states():
        if kind == "ADDED" and pod.metadata.name not in old:
            first_new = current
            break
    assert first_new is not None
    assert set(first_new) == {next(iter(set(first_new)))}, \
        f"a new pod appeared while these still existed: {sorted(first_new)}"
    assert {p["spec"]["nodeName"] for p in pods_of(cluster, "rec")} == {"node2"}
    assert len(ready_pods(cluster, "rec")) == 2


def test_dry_run_writes_nothing(cluster, kube_client):
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "real"}, "data": {"k": "v"}})
    before = cluster.store.get(CONFIGMAPS, "default", "real")
    cluster.clear_request_log()

    created = core.create_namespaced_config_map("default", {"metadata": {"name": "ghost"}, "data": {"k": "v"}},
                                                dry_run="All")
    assert created.metadata.name == "ghost"
    patched = core.patch_namespaced_config_map("real", "default", {"data": {"k": "changed"}}, dry_run="All")
    assert patched.data == {"k": "changed"}
    core.delete_namespaced_config_map("real", "default", dry_run="All")
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_deployment("default", deployment("dry", replicas=1), dry_run="All")

    log = cluster.writes()
    assert [(r["method"], r["status"]) for r in log] == [("POST", 201), ("PATCH", 200), ("DELETE", 200),
                                                         ("POST", 201)]
    assert all(r["query"].get("dryRun") == "All" for r in log)
    assert cluster.store.find(CONFIGMAPS, "default", "ghost") is None
    after = cluster.store.get(CONFIGMAPS, "default", "real")
    assert after == before
    assert cluster.store.find(DEPLOYMENTS, "default", "dry") is None
    time.sleep(0.5)
    assert not pods_of(cluster, "dry")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("ghost", "default")
    assert err.value.status == 404


def local_pvc(name: str, storage_class: str = "local-path") -> dict:
    return {"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                                                 "resources": {"requests": {"storage": "1Gi"}}}}


def pod_with_claim(name: str, claim: str, node: str | None = None) -> dict:
    spec = {"containers": [{"name": "c", "image": "busybox:1.36", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}],
            "terminationGracePeriodSeconds": 1}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"metadata": {"name": name, "labels": {"app": name}}, "spec": spec}


def scheduled_message(core, name: str) -> str:
    pod = core.read_namespaced_pod(name, "default")
    cond = [c for c in pod.status.conditions or [] if c.type == "PodScheduled" and c.status == "False"]
    return f"{cond[0].reason}: {cond[0].message}" if cond else ""


def test_local_path_pvc_pins_its_pod_to_one_node(cluster, kube_client):
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_persistent_volume_claim("default", local_pvc("pinned"))
    time.sleep(0.3)
    assert core.read_namespaced_persistent_volume_claim("pinned", "default").status.phase == "Pending"  # WFFC
    core.create_namespaced_pod("default", pod_with_claim("first", "pinned"))
    wait_for(lambda: core.read_namespaced_pod("first", "default").status.phase == "Running", what="first running")
    home = core.read_namespaced_pod("first", "default").spec.node_name
    other = {"node1": "node2", "node2": "node1"}[home]
    pvc = core.read_namespaced_persistent_volume_claim("pinned", "default")
    assert pvc.status.phase == "Bound"
    pv = cluster.store.get(PVS, None, pvc.spec.volume_name)
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [home]
    core.delete_namespaced_pod("first", "default")
    wait_for(lambda: not pods_of(cluster, "first"), what="first gone")

    for i in range(3):   # any number of new pods land on the volume's node
        core.create_namespaced_pod("default", pod_with_claim(f"again{i}", "pinned"))
        wait_for(lambda: core.read_namespaced_pod(f"again{i}", "default").spec.node_name, what="scheduled")
        assert core.read_namespaced_pod(f"again{i}", "default").spec.node_name == home
        core.delete_namespaced_pod(f"again{i}", "default", grace_period_seconds=0)
        wait_for(lambda: not pods_of(cluster, f"again{i}"), what="gone")

    core.create_namespaced_pod("default", pod_with_claim("elsewhere", "pinned", node=other))
    message = wait_for(lambda: scheduled_message(core, "elsewhere"), what="unschedulable")
    assert message == ("Unschedulable: 0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                       "1 node(s) had volume node affinity conflict. preemption: 0/2 nodes are available: "
                       "2 Preemption is not helpful for scheduling.")
    time.sleep(0.5)
    pod = core.read_namespaced_pod("elsewhere", "default")
    assert pod.status.phase == "Pending" and pod.spec.node_name is None


def test_no_ready_schedulable_node_stays_pending_with_reason(cluster, kube_client):
    core = client.CoreV1Api(kube_client)
    kubectl(cluster, "cordon", "node2")
    core.create_namespaced_pod("default", {"metadata": {"name": "stuck"}, "spec": {
        "nodeSelector": {"kubernetes.io/hostname": "node2"},
        "containers": [{"name": "c", "image": "busybox:1.36"}]}})
    message = wait_for(lambda: scheduled_message(core, "stuck"), what="unschedulable")
    assert message == ("Unschedulable: 0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                       "1 node(s) were unschedulable. preemption: 0/2 nodes are available: "
                       "2 Preemption is not helpful for scheduling.")
    time.sleep(0.5)
    pod = core.read_namespaced_pod("stuck", "default")
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    events = core.list_namespaced_event("default", field_selector="involvedObject.name=stuck").items
    assert any(e.reason == "FailedScheduling" and e.type == "Warning" for e in events)

    kubectl(cluster, "uncordon", "node2")   # once the node is schedulable again the pod runs there
    wait_for(lambda: core.read_namespaced_pod("stuck", "default").spec.node_name == "node2", what="scheduled")


def test_not_ready_node_gets_no_pod(tmp_path):
    """A node whose kubelet stopped heartbeating: NotReady in kubectl, tainted unreachable, no pod scheduled."""
    from kubesim.cluster import Cluster
    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0, heartbeat_seconds=0.5,
                 node_monitor_grace_seconds=2.0, work_dir=str(tmp_path / "kubesim"),
                 kubeconfig_path=str(tmp_path / "kubeconfig")) as cluster:
        cluster.faults.add("node-not-ready", node="node2")
        wait_for(lambda: {r["NAME"]: r["STATUS"] for r in rows(kubectl(cluster, "get", "nodes").stdout)}
                 == {"node1": "Ready", "node2": "NotReady"}, timeout=15, interval=0.3, what="node2 NotReady")
        kubectl(cluster, "run", "stuck", "--image=nginx:1.27",
                "--overrides", '{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node2"}}}')
        expected = ("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                    "1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }. preemption: "
                    "0/2 nodes are available: 2 Preemption is not helpful for scheduling.")
        wait_for(lambda: expected in " ".join(kubectl(cluster, "describe", "pod", "stuck").stdout.split()),
                 interval=0.3, what="FailedScheduling for the unreachable node")
        time.sleep(0.5)
        pod = cluster.store.get(PODS, "default", "stuck")
        assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
        cluster.faults.clear(kind="node-not-ready")   # the kubelet is back: the pod runs there
        wait_for(lambda: cluster.store.get(PODS, "default", "stuck")["spec"].get("nodeName") == "node2",
                 timeout=15, what="scheduled to node2 once Ready")


# ---- DaemonSets: rollout status, and drain leaves their pods -----------------------------------------------
DAEMONSET = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: agent, image: nginx, ports: [{containerPort: 80}]}]
"""


def test_daemonset_rollout_status_and_drain(cluster):
    kubectl(cluster, "apply", "-f", "-", input=DAEMONSET)
    status = kubectl(cluster, "rollout", "status", "daemonset/agent", "--timeout=60s", timeout=90)
    assert 'daemon set "agent" successfully rolled out' in status.stdout
    table = rows(kubectl(cluster, "get", "ds", "agent").stdout)
    assert (table[0]["DESIRED"], table[0]["CURRENT"], table[0]["READY"], table[0]["AVAILABLE"]) == ("2", "2", "2", "2")
    [on_node1] = [p["metadata"]["name"] for p in pods_of(cluster, "agent") if p["spec"]["nodeName"] == "node1"]

    refused = kubectl(cluster, "drain", "node1", "--delete-emptydir-data", "--timeout=10s", check=False)
    assert refused.returncode != 0
    assert "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)" in refused.stderr
    drained = kubectl(cluster, "drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=30s",
                      timeout=60)
    assert f"Warning: ignoring DaemonSet-managed Pods: default/{on_node1}" in drained.stderr
    assert "node/node1 drained" in drained.stdout
    assert on_node1 in [p["metadata"]["name"] for p in pods_of(cluster, "agent") if p["spec"]["nodeName"] == "node1"]
    kubectl(cluster, "uncordon", "node1")
    kubectl(cluster, "delete", "daemonset", "agent")
    wait_for(lambda: pods_of(cluster, "agent") == [], what="the DaemonSet's pods collected")
