"""The logic behind each operator, against kubesim through the real kubernetes / kubernetes_asyncio clients."""
from __future__ import annotations

import base64
import json
import re
import time
import urllib.request

import pytest
from kubernetes.client import AppsV1Api, CoreV1Api, StorageV1Api

from k8smove import K8sMoveError
from k8smove.apply import apply_manifests, record_prior_state, restore_prior_state
from k8smove.nodes import label_nodes
from k8smove.engine import plan_release
from k8smove.preflight import check_storage_classes, recorded_release
from k8smove.render import render_manifests
from k8smove.rollout import RolloutTracker, workloads_in
from k8smove.verify import pods_left_on_sources, verify_endpoint, verify_source_empty
from kubesim_release import LABEL_NODES, deploy_values, pods_by_component, wait


def deploy(cluster, kube_client, values, components=("app", "db")):
    label_nodes(kube_client, LABEL_NODES)
    manifests = render_manifests(values, components)
    apply_manifests(kube_client, manifests)
    assert wait(cluster.kubeconfig_path, "default", values["release"], workloads_in(manifests), 60) == {
        "status": "success"}
    return manifests


def clear_request_log(cluster, kube_client):
    """Forget the requests so far. kubesim logs a request after answering it, so one more request on the
    client's connection first makes sure the previous one is in the log before it is cleared."""
    CoreV1Api(kube_client).read_namespace("default")
    cluster.clear_request_log()


# ---- LabelNodes ----------------------------------------------------------------------------------------

def test_label_nodes_sets_removes_and_is_idempotent(cluster, kube_client):
    core = CoreV1Api(kube_client)
    assert label_nodes(kube_client, {"node1": {"demo": "node1", "old": "x"}}) == {
        "node1": {"demo": "node1", "old": "x"}}
    clear_request_log(cluster, kube_client)
    assert label_nodes(kube_client, {"node1": {"demo": "node1", "old": "x"}}) == {}
    assert cluster.writes() == []
    assert label_nodes(kube_client, {"node1": {"old-": None}}) == {"node1": {"old": None}}
    labels = core.read_node("node1").metadata.labels
    assert labels["demo"] == "node1" and "old" not in labels


def test_label_nodes_unknown_node_fails_naming_it_and_writes_nothing(cluster, kube_client):
    clear_request_log(cluster, kube_client)
    with pytest.raises(K8sMoveError, match="node 'node9' not found"):
        label_nodes(kube_client, {"node1": {"demo": "node1"}, "node9": {"demo": "x"}})
    assert cluster.writes() == []


# ---- Preflight -----------------------------------------------------------------------------------------

def cordon(kube_client, node):
    CoreV1Api(kube_client).patch_node(node, {"spec": {"unschedulable": True}})


def taint(kube_client, node):
    CoreV1Api(kube_client).patch_node(node, {"spec": {"taints": [
        {"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}})


def fill(kube_client, node):
    """A pod of another app taking all but 400m of the node's 4 cpus: one DB and one App pod still fit."""
    CoreV1Api(kube_client).create_namespaced_pod("default", {"metadata": {"name": "filler"}, "spec": {
        "nodeName": node, "containers": [{"name": "c", "image": "nginx",
                                          "resources": {"requests": {"cpu": "3600m"}}}]}})


@pytest.mark.parametrize("prepare,values,label_changes,message", [
    (None, {}, {"node7": {"demo": "x"}}, "label_nodes: node 'node7' not found"),
    (None, {"node_label": {"demo": "node3"}}, LABEL_NODES, "node_label demo=node3 matches no node"),
    (cordon, {}, LABEL_NODES, "node1: cordoned"),
    (taint, {}, LABEL_NODES, "node1: taint dedicated=db:NoSchedule not tolerated"),
    (None, {"replicas": 1, "images": {"app": "kubesim-demo-app:1.0", "db": "postgres:16"}},
     {"node1": {"demo": "x\n  hostNetwork: true"}}, "label_nodes.node1: invalid label value"),
    (fill, {"replicas": 3}, LABEL_NODES,
     r"replicas: the pods do not all fit on the nodes node_label demo=node1 selects \(node1\), though each fits "
     r"alone: 2 pod\(s\) of Deployment demo-app find no room once the others are placed \(they request cpu "
     r"200m, memory 128Mi; free then: node1 cpu 50m, "),
    # valid, but not routed to this cluster (kubesim: neither a node's address nor in 10.192.0.0/12)
    (None, {"external_ip": "192.0.2.10"}, LABEL_NODES,
     r"external_ip 192.0.2.10: not an address of this cluster, so nothing would ever answer on it: neither a "
     r"node's address \(node1 127\.0\.\d+\.1, node2 127\.0\.\d+\.2\) nor in the ranges declared routed to it "
     r"\(\[k8smove\] external_ip_ranges: 10\.192\.0\.0/12\)"),
    (None, {"storage": {"class": "fast", "size": "1Gi"}}, LABEL_NODES,
     r"storage.class 'fast': the cluster has no StorageClass of that name \(it has: local-path, standard\)"),
    # valid but for a trailing newline
    (None, {"node_label": {"demo": "node1\n"}}, LABEL_NODES, r"node_label: invalid label value 'node1\\n'"),
    (None, {}, {"node1": {"demo\n": "node1"}}, r"label_nodes.node1: invalid label key 'demo\\n'"),
])
def test_preflight_refuses_and_writes_nothing(cluster, kube_client, prepare, values, label_changes, message):
    if prepare:
        prepare(kube_client, "node1")
    clear_request_log(cluster, kube_client)
    with pytest.raises(K8sMoveError, match=message):
        plan_deploy(kube_client, deploy_values(**values), label_changes)
    assert cluster.writes() == []


@pytest.mark.parametrize("values,message", [
    ({"namespace": "nosuch"}, r'ConfigMap nosuch/demo-k8smove: NotFound: namespaces "nosuch" not found'),
    ({"external_ip": "127.0.0.1"}, "external_ip 127.0.0.1: a loopback address, which Kubernetes refuses"),
])
def test_what_the_api_server_would_refuse_is_refused_before_any_write(cluster, kube_client, values, message):
    """The plan asks the API server (server-side dry runs of every manifest) and refuses with its answer."""
    clear_request_log(cluster, kube_client)
    with pytest.raises(K8sMoveError, match=message):
        plan_deploy(kube_client, deploy_values(**values), LABEL_NODES)
    assert cluster.writes(dry_runs=False) == []


def test_a_second_release_on_the_same_address_and_port_is_refused_before_any_write(cluster, kube_client):
    values = deploy_values()
    CoreV1Api(kube_client).create_namespaced_service("kube-public", {"metadata": {"name": "other"}, "spec": {
        "externalIPs": [values["external_ip"]], "ports": [{"port": 8080}], "selector": {"app": "other"}}})
    clear_request_log(cluster, kube_client)
    with pytest.raises(K8sMoveError, match=rf"external_ip {re.escape(values['external_ip'])} port 8080: already "
                                           rf"claimed by Service kube-public/other; choose another external_ip or port"):
        plan_deploy(kube_client, values, LABEL_NODES)
    assert cluster.writes(dry_runs=False) == []
    assert plan_deploy(kube_client, {**values, "port": 8081}, LABEL_NODES)["existing"] is False   # another port


def test_a_claim_without_a_class_needs_a_default_storage_class(cluster, kube_client):
    claim = next(m for m in render_manifests(deploy_values(), ["db"]) if m["kind"] == "PersistentVolumeClaim")
    unnamed = {**claim, "spec": {k: v for k, v in claim["spec"].items() if k != "storageClassName"}}
    check_storage_classes(kube_client, [unnamed])   # kubesim's "standard" is the default
    StorageV1Api(kube_client).patch_storage_class("standard", {"metadata": {"annotations": {
        "storageclass.kubernetes.io/is-default-class": None}}})
    clear_request_log(cluster, kube_client)
    with pytest.raises(K8sMoveError, match=r"storage.class: none named and the cluster has no default StorageClass "
                                           r"\(it has: local-path, standard\)"):
        check_storage_classes(kube_client, [unnamed])
    assert cluster.writes() == []


def plan_deploy(kube_client, values, label_changes):
    settings = {k: v for k, v in values.items() if k not in ("namespace", "release", "node_label")}
    return plan_release(kube_client, values["namespace"], values["release"], values["node_label"],
                        settings=settings, label_nodes=label_changes)


def test_preflight_passes_with_labels_still_to_set(cluster, kube_client):
    plan = plan_deploy(kube_client, deploy_values(), LABEL_NODES)
    assert plan["target_nodes"] == ["node1"] and plan["existing"] is False and plan["sources"] == {}
    assert [m["kind"] for m in plan["manifests"]][0] == "ConfigMap"   # the manifests the move will apply


def test_preflight_of_a_migration(cluster, kube_client):
    clear_request_log(cluster, kube_client)
    with pytest.raises(K8sMoveError, match="release 'demo' not found"):
        recorded_release(kube_client, "default", "demo", ["app", "db"])
    values = deploy_values()
    deploy(cluster, kube_client, values)
    recorded, sources = recorded_release(kube_client, "default", "demo", ["app", "db"])
    assert recorded["external_ip"] == values["external_ip"] and "node_label" not in recorded
    assert sources == {"app": {"demo": "node1"}, "db": {"demo": "node1"}}
    CoreV1Api(kube_client).patch_node("node1", {"metadata": {"labels": {"zone": "a"}}})
    clear_request_log(cluster, kube_client)
    with pytest.raises(K8sMoveError, match="source and target are the same node.*node1"):
        plan_release(kube_client, "default", "demo", {"zone": "a"})
    plan = plan_release(kube_client, "default", "demo", {"demo": "node2"})
    assert (plan["target_nodes"], plan["sources"], plan["existing"]) == (["node2"], sources, True)
    with pytest.raises(K8sMoveError, match="matches no node outside node2"):
        plan_release(kube_client, "default", "demo", {"demo": "node2"}, avoid_nodes=["node2"])
    # A re-deploy may change placement and images, never what connected clients hold on to.
    with pytest.raises(K8sMoveError, match=r"release default/demo exists: port: 8081 differs from the release's "
                                           r"8080 \(the Service's port: every connected client would lose it\)"):
        plan_release(kube_client, "default", "demo", {"demo": "node2"}, settings={**recorded, "port": 8081})
    assert plan_release(kube_client, "default", "demo", {"demo": "node2"}, settings=recorded)["existing"]
    assert cluster.writes(dry_runs=False) == []   # plans ask the API server with dry runs only


def test_a_release_whose_db_secret_was_deleted_is_refused_before_any_write(cluster, kube_client):
    """Re-created, the Secret would hold a new password the database does not know."""
    values = deploy_values()
    deploy(cluster, kube_client, values)
    CoreV1Api(kube_client).delete_namespaced_secret("demo-db", "default")
    clear_request_log(cluster, kube_client)
    for plan in (lambda: plan_release(kube_client, "default", "demo", {"demo": "node2"}),
                 lambda: plan_release(kube_client, "default", "demo", {"demo": "node2"}, components=["app"]),
                 lambda: plan_deploy(kube_client, values, LABEL_NODES)):
        with pytest.raises(K8sMoveError, match=r"release default/demo: its DB Secret default/demo-db is missing "
                                               r"\(deleted by hand\?\); a move would create it with a new password "
                                               r".*\(kubectl -n default create secret generic demo-db "
                                               r"--from-literal=password=<password>"):
            plan()
    assert cluster.writes(dry_runs=False) == []


# ---- ApplyResources ------------------------------------------------------------------------------------

def live_versions(kube_client, manifests):
    from k8smove import kube

    return {kube.ref(m): (kube.get(kube_client, m)["metadata"].get("generation"),
                          kube.get(kube_client, m)["metadata"]["resourceVersion"]) for m in manifests}


def test_apply_creates_then_a_second_identical_apply_changes_nothing(cluster, kube_client):
    values = deploy_values()
    manifests = render_manifests(values, ["app", "db"])
    label_nodes(kube_client, LABEL_NODES)
    first = apply_manifests(kube_client, manifests)
    assert {r["result"] for r in first} == {"created"}
    applies = [r for r in cluster.writes() if r["resource"] != "nodes"]
    assert len(applies) == len(manifests)
    assert all(r["method"] == "PATCH" and r["query"]["fieldManager"] == "k8smove" for r in applies)
    assert wait(cluster.kubeconfig_path, "default", "demo", workloads_in(manifests), 60)["status"] == "success"
    before = live_versions(kube_client, manifests)
    second = apply_manifests(kube_client, manifests)
    assert {r["result"] for r in second} == {"unchanged", "unchanged (create-only)"}
    assert live_versions(kube_client, manifests) == before


def test_an_object_still_being_deleted_is_waited_for_then_created_anew(cluster, kube_client):
    """A rollback or a takeover deletes a claim its pod still uses (pvc-protection keeps it, terminating); the
    next move's apply must create the claim anew, not update the dying one its new pod would wait for forever."""
    import threading

    core = CoreV1Api(kube_client)
    held = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "dying", "namespace": "default", "finalizers": ["example.com/in-use"]},
            "data": {"generation": "old"}}
    core.create_namespaced_config_map("default", held)
    core.delete_namespaced_config_map("dying", "default")
    assert core.read_namespaced_config_map("dying", "default").metadata.deletion_timestamp is not None
    # its last user lets go a second later, as the claim's pod ends
    release = threading.Timer(1.0, core.patch_namespaced_config_map, ("dying", "default",
                                                                      {"metadata": {"finalizers": None}}))
    release.start()
    started = time.monotonic()
    fresh = {**held, "metadata": {"name": "dying", "namespace": "default"}, "data": {"generation": "new"}}
    try:
        assert apply_manifests(kube_client, [fresh]) == [{"object": "ConfigMap default/dying", "result": "created"}]
    finally:
        release.join()
    assert time.monotonic() - started >= 0.9
    live = core.read_namespaced_config_map("dying", "default")
    assert live.metadata.deletion_timestamp is None and live.data == {"generation": "new"}


def test_secret_is_generated_once_and_never_rotated(cluster, kube_client):
    manifests = render_manifests(deploy_values(), ["db"])
    masked = []
    results = apply_manifests(kube_client, manifests, on_secret=masked.append)
    secrets = [CoreV1Api(kube_client).read_namespaced_secret(name, "default")
               for name in ("demo-db", "demo-db-replication")]
    passwords = [base64.b64decode(secret.data["password"]).decode() for secret in secrets]
    assert masked == passwords and all(len(p) >= 24 for p in passwords) and passwords[0] != passwords[1]
    prior = record_prior_state(kube_client, manifests)
    apply_manifests(kube_client, manifests, on_secret=masked.append)
    assert [CoreV1Api(kube_client).read_namespaced_secret(s.metadata.name, "default").data for s in secrets] == \
        [s.data for s in secrets]
    assert masked == passwords
    assert not any(p in json.dumps(results) + json.dumps(prior) for p in passwords)


def test_dry_run_applies_nothing_and_logs_the_diff(cluster, kube_client, caplog):
    values = deploy_values()
    label_nodes(kube_client, LABEL_NODES)
    applied = render_manifests(values, ["app", "db"])   # the App gets Ready only with its DB
    apply_manifests(kube_client, applied)
    # the rollout done first: until then the deployment controller writes the Deployment's status (a new version)
    assert wait(cluster.kubeconfig_path, "default", "demo", workloads_in(applied), 60)["status"] == "success"
    moved = render_manifests({**values, "node_label": {"demo": "node2"}}, ["app"])
    before = live_versions(kube_client, moved)
    caplog.set_level("INFO", logger="k8smove.apply")
    results = apply_manifests(kube_client, moved, dry_run=True)
    assert {"object": "Deployment default/demo-app", "result": "configured (dry run)"} in results
    assert live_versions(kube_client, moved) == before
    assert "-        demo: node1" in caplog.text and "+        demo: node2" in caplog.text
    assert [r["query"].get("dryRun") for r in cluster.writes() if r["name"] == "demo-app"] == [None, "All"]


# ---- WaitReady -----------------------------------------------------------------------------------------

# It times the wait against the moment kubesim's in-process store holds the complete state: its own API server.
@pytest.mark.parametrize("control_plane_kind", ["kubesim"])
def test_wait_notices_ready_within_100ms(cluster, kube_client):
    """Time from the cluster state being complete (seen in the store) to the watch-driven wait returning."""
    seen = []
    cluster.store.add_listener(lambda event: seen.append((time.monotonic(), event.resource.kind, event.type,
                                                          event.object)))
    values = deploy_values()
    label_nodes(kube_client, LABEL_NODES)
    manifests = render_manifests(values, ["app", "db"])
    apply_manifests(kube_client, manifests)
    result = wait(cluster.kubeconfig_path, "default", "demo", workloads_in(manifests), 60)
    returned = time.monotonic()
    assert result == {"status": "success"}
    tracker = RolloutTracker(workloads_in(manifests))
    complete_at = None
    for at, kind, event_type, obj in list(seen):
        if kind in ("Pod", "Deployment", "StatefulSet", "Node"):
            tracker.observe(kind, event_type, obj)
            if complete_at is None and not tracker.pending():
                complete_at = at
    assert complete_at is not None
    assert returned - complete_at <= 0.1, f"noticed {returned - complete_at:.3f}s after Ready"


def test_wait_timeout_reports_the_clusters_reason(cluster, kube_client):
    cluster.faults.add("image-pull-error", image="kubesim-demo-app:*", message="registry unreachable")
    label_nodes(kube_client, LABEL_NODES)
    manifests = render_manifests(deploy_values(), ["app"])
    apply_manifests(kube_client, manifests)
    result = wait(cluster.kubeconfig_path, "default", "demo", workloads_in(manifests), 3)
    assert result["status"] == "timeout"
    assert result["pending"] and result["pending"][0].startswith("Deployment demo-app")
    assert any("ErrImagePull" in r or "ImagePullBackOff" in r for r in result["reasons"]), result["reasons"]


def test_wait_timeout_reports_failed_scheduling(cluster, kube_client):
    manifests = render_manifests(deploy_values(node_label={"demo": "nowhere"}), ["app"])
    apply_manifests(kube_client, manifests)
    result = wait(cluster.kubeconfig_path, "default", "demo", workloads_in(manifests), 2)
    assert result["status"] == "timeout"
    assert any("node" in r and ("selector" in r or "affinity" in r) for r in result["reasons"]), result["reasons"]


# ---- Migration, VerifySourceEmpty, VerifyEndpoint, Rollback --------------------------------------------

def test_migration_moves_everything_and_the_endpoint_answers(cluster, kube_client):
    values = deploy_values()
    deploy(cluster, kube_client, values)
    url = f"http://{values['external_ip']}:{values['port']}/"
    assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node1"
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    row = post_row(url, "before the move")
    sources = {"app": {"demo": "node1"}, "db": {"demo": "node1"}}
    moved = render_manifests({**values, "node_label": {"demo": "node2"}}, ["app", "db"])
    apply_manifests(kube_client, moved)
    assert wait(cluster.kubeconfig_path, "default", "demo", workloads_in(moved), 60)["status"] == "success"
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    verify_source_empty(kube_client, "default", "demo", sources, {"demo": "node2"})
    assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node2"
    # The DB's data followed it (network-attached volume) and the App reconnected to it.
    assert row in verify_endpoint(url + "rows", deadline_seconds=30)["body"]["ids"]


def post_row(url: str, value: str) -> int:
    request = urllib.request.Request(url + "rows", data=json.dumps({"value": value}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        return json.loads(response.read())["id"]


def test_verify_source_empty_names_pods_left(cluster, kube_client):
    deploy(cluster, kube_client, deploy_values())
    sources = {"app": {"demo": "node1"}}
    assert pods_left_on_sources(kube_client, "default", "demo", sources, {"demo": "node2"})
    with pytest.raises(K8sMoveError, match=r"pods still on the source node\(s\): demo-app-.* on node1"):
        verify_source_empty(kube_client, "default", "demo", sources, {"demo": "node2"})


def test_verify_endpoint_fails_within_its_deadline_with_the_last_answer():
    started = time.monotonic()
    with pytest.raises(K8sMoveError, match="did not answer with status 200 within 1.0s.*last answer: None"):
        verify_endpoint("http://127.77.250.250:9/", deadline_seconds=1.0)
    assert time.monotonic() - started < 3


def test_rollback_restores_the_prior_state(cluster, kube_client):
    values = deploy_values()
    deploy(cluster, kube_client, values)
    app_before = AppsV1Api(kube_client).read_namespaced_deployment("demo-app", "default")
    moved = render_manifests({**values, "node_label": {"demo": "node2"}, "images": {
        "app": "kubesim-demo-app:2.0-broken", "db": "postgres:16"}}, ["app"])
    cluster.faults.add("image-pull-error", image="kubesim-demo-app:2.0-broken")
    prior = record_prior_state(kube_client, moved)
    apply_manifests(kube_client, moved)
    assert wait(cluster.kubeconfig_path, "default", "demo", workloads_in(moved), 2)["status"] == "timeout"
    restored = restore_prior_state(kube_client, prior)
    assert {"object": "Deployment default/demo-app", "result": "restored"} in restored
    source_workloads = workloads_in([e["object"] for e in prior if "object" in e])
    assert source_workloads == [{"kind": "Deployment", "name": "demo-app", "node_selector": {"demo": "node1"}}]
    assert wait(cluster.kubeconfig_path, "default", "demo", source_workloads, 60)["status"] == "success"
    app_after = AppsV1Api(kube_client).read_namespaced_deployment("demo-app", "default")
    assert app_after.spec.template.spec.node_selector == {"demo": "node1"}
    assert app_after.spec.template.spec.containers[0].image == app_before.spec.template.spec.containers[0].image
    assert pods_by_component(kube_client)["app"] == ["node1"]


@pytest.mark.parametrize("api_faults", [True])   # through the faults proxy
@pytest.mark.parametrize("fault", [
    {"kind": "api-error", "verb": "watch", "resource": "pods", "code": "500", "count": 3},
    {"kind": "api-error", "verb": "watch", "resource": "apps/deployments", "code": "429", "count": 2},
    {"kind": "api-error", "verb": "list", "resource": "pods", "code": "timeout", "seconds": 0.5, "count": 1},
])
def test_wait_resumes_after_watch_failures(cluster, kube_client, fault):
    label_nodes(kube_client, LABEL_NODES)
    manifests = render_manifests(deploy_values(), ["app", "db"])
    injected = cluster.faults.add(**fault)
    apply_manifests(kube_client, manifests)
    assert wait(cluster.kubeconfig_path, "default", "demo", workloads_in(manifests), 60) == {"status": "success"}
    assert injected.hits == fault["count"]
