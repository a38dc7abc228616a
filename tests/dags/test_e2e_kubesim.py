"""`airflow dags test deploy_app` then `migrate_app` against kubesim, as a user runs them."""
from __future__ import annotations

import base64
import json

import pytest
from kubernetes.client import AppsV1Api, CoreV1Api

from k8smove.verify import verify_endpoint
from kubesim_release import pods_by_component
from migration_support import (
    assert_moved_without_disruption,
    clear_request_log,
    deploy_conf,
    generations,
    newest_report,
    pods_on,
)

pytestmark = pytest.mark.slow


def test_deploy_then_migrate(cluster, kube_client, dags_test, report_dir):
    conf = deploy_conf()
    url = f"http://{conf['external_ip']}:8080/"
    clear_request_log(cluster, kube_client)
    planned = dags_test("deploy_app", {**conf, "dry_run": True})
    assert planned.returncode == 0, planned.stdout[-5000:]
    assert [w for w in cluster.writes() if w["query"].get("dryRun") != "All"] == []
    assert pods_by_component(kube_client) == {}
    assert "demo" not in (CoreV1Api(kube_client).read_node("node1").metadata.labels or {})
    assert "Node labels that would change (dry run): {'node1': {'demo': 'node1'}, 'node2': {'demo': 'node2'}}" \
        in planned.stdout
    assert "Deployment default/demo-app created (dry run)" in planned.stdout
    assert "password" in planned.stdout and "<redacted>" in planned.stdout   # the Secret's diff, its value hidden

    deployed = dags_test("deploy_app", conf)
    assert deployed.returncode == 0, deployed.stdout[-5000:]
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node1"

    # A dry run says what the move would change and changes nothing.
    clear_request_log(cluster, kube_client)
    dry = dags_test("migrate_app", {"node_label": {"demo": "node2"}, "dry_run": True})
    assert dry.returncode == 0, dry.stdout[-5000:]
    assert [w for w in cluster.writes() if w["query"].get("dryRun") != "All"] == []
    assert {w["method"] for w in cluster.writes()} == {"PATCH"}   # the server-side dry-run applies
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    report = newest_report(report_dir)
    assert (report["outcome"], report["reason"], report["probe"], report["db"]) == ("dry_run", None, None, None)
    planned = {p["object"]: p["result"] for p in report["planned"]}
    assert planned["Deployment default/demo-app"] == "configured (dry run)"
    # the DB moves by switchover: a new instance on the target, the Service still on the serving one
    assert planned["Deployment default/demo-db-1"] == planned["PersistentVolumeClaim default/demo-db-1"] \
        == "created (dry run)"
    assert planned["Service default/demo-db"] == "unchanged (dry run)", planned
    assert planned["Service default/demo"] == "unchanged (dry run)", planned
    assert [report["steps"][t]["state"] for t in ("move", "rollback", "stop_probe")] \
        == ["success", "skipped", "success"], report["steps"]
    assert "would be configured: Deployment default/demo-app" in dry.stdout

    migrated = dags_test("migrate_app", {"node_label": {"demo": "node2"}})
    assert migrated.returncode == 0, migrated.stdout[-5000:]
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    assert pods_on(kube_client, "node1") == []
    assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node2"
    assert_moved_without_disruption(newest_report(report_dir), "node1", "node2")

    back = dags_test("migrate_app", {"node_label": {"demo": "node1"}})
    assert back.returncode == 0, back.stdout[-5000:]
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    assert pods_on(kube_client, "node2") == []
    assert_moved_without_disruption(newest_report(report_dir), "node2", "node1")

    to_node2 = dags_test("migrate_app", {"node_label": {"demo": "node2"}})
    assert to_node2.returncode == 0, to_node2.stdout[-5000:]

    for secret in ("demo-db", "demo-db-replication"):   # the DB's and the standbys' (the switchover's) logins
        password = base64.b64decode(CoreV1Api(kube_client).read_namespaced_secret(secret, "default").data["password"])
        assert password.decode() not in deployed.stdout + migrated.stdout + back.stdout + to_node2.stdout

    # Migrating to where the release already is succeeds and changes nothing.
    before = generations(kube_client)
    again = dags_test("migrate_app", {"node_label": {"demo": "node2"}})
    assert again.returncode == 0, again.stdout[-5000:]
    assert {n: g for n, (g, _) in generations(kube_client).items()} == {n: g for n, (g, _) in before.items()}
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    assert newest_report(report_dir)["outcome"] == "unchanged"

    # A different selector for the same node is not a move: refused before any write.
    clear_request_log(cluster, kube_client)
    same = dags_test("migrate_app", {"node_label": {"kubernetes.io/hostname": "node2"}})
    assert same.returncode != 0
    assert "source and target are the same node(s) node2" in same.stdout
    assert cluster.writes() == []


@pytest.mark.parametrize("dag_id,conf,message", [
    ("deploy_app", {"port": 70000}, "Invalid input for param port"),
    ("deploy_app", {"external_ip": "10.0.0.300"}, "Invalid input for param external_ip"),
    ("deploy_app", {"node_label": {"demo": "node1\n  hostNetwork: true"}}, "Invalid input for param node_label"),
    ("deploy_app", {"node_lable": {"demo": "node1"}}, "unknown conf key(s) node_lable"),
    ("deploy_app", {"label_nodes": {"node9": {"demo": "node1"}}, "node_label": {"demo": "node1"}},
     "label_nodes: node 'node9' not found"),
    ("deploy_app", {"node_label": {"demo": "node3"}}, "node_label demo=node3 matches no node"),
    ("migrate_app", {"node_label": {"demo": "node2"}}, "release 'demo' not found"),
])
def test_invalid_conf_is_refused_and_nothing_is_written(cluster, kube_client, dags_test, dag_id, conf, message):
    clear_request_log(cluster, kube_client)
    result = dags_test(dag_id, conf)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-5000:]
    assert cluster.writes() == []


def test_failed_migration_rolls_back_and_the_run_fails_with_the_reason(cluster, kube_client, dags_test,
                                                                       report_dir):
    conf = deploy_conf()
    assert dags_test("deploy_app", conf).returncode == 0
    cluster.faults.add("slow-startup", node="node2", seconds=120)    # pods on the target never get Ready in time
    result = dags_test("migrate_app", {"node_label": {"demo": "node2"}, "timeout_seconds": 10,
                                       "components": ["app"]})
    assert result.returncode != 0
    assert "Rollout not complete after 10s: Deployment demo-app" in result.stdout, result.stdout[-8000:]
    assert "Rolled back" in result.stdout
    assert AppsV1Api(kube_client).read_namespaced_deployment(
        "demo-app", "default").spec.template.spec.node_selector == {"demo": "node1"}
    assert pods_by_component(kube_client)["app"] == ["node1"], result.stdout[-8000:]
    report = newest_report(report_dir)
    assert report["outcome"] == "rolled_back", report
    assert "Rollout not complete after 10s" in report["reason"]
    assert report["probe"]["failed"] == 0, report["probe"]
    assert verify_endpoint(f"http://{conf['external_ip']}:8080/", deadline_seconds=20)["body"]["node"] == "node1"


def test_without_a_connection_the_hook_uses_kubeconfig(cluster, kube_client, airflow_cli):
    """KubernetesHook 10.25.0 with no kubernetes_default connection: an empty connection, then in-cluster
    config, then the kubeconfig KUBECONFIG names (the trigger's AsyncKubernetesHook: the kubeconfig only)."""
    conf = deploy_conf()
    result = airflow_cli("dags", "test", "deploy_app", "--conf", json.dumps(conf),
                         extra_env={"KUBECONFIG": cluster.kubeconfig_path,
                                    "AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS": "0"})   # the trigger's hook too
    assert result.returncode == 0, result.stdout[-5000:]
    assert "[DAG TEST] Trigger completed" in result.stdout      # wait_ready deferred, its trigger ran inline
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}


def test_a_redeploy_that_changes_placement_is_a_proven_move(cluster, kube_client, dags_test, report_dir):
    conf = deploy_conf()
    first = dags_test("deploy_app", conf)
    assert first.returncode == 0, first.stdout[-5000:]
    assert newest_report(report_dir, "deploy_app")["outcome"] == "deployed"

    redeploy = dags_test("deploy_app", {**conf, "node_label": {"demo": "node2"}})
    assert redeploy.returncode == 0, redeploy.stdout[-5000:]
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    assert_moved_without_disruption(newest_report(report_dir, "deploy_app"), "node1", "node2")

    # What connected clients hold on to is refused before any write, naming the field.
    clear_request_log(cluster, kube_client)
    moved_port = dags_test("deploy_app", {**conf, "node_label": {"demo": "node2"}, "port": 8081})
    assert moved_port.returncode != 0
    assert ("release default/demo exists: port: 8081 differs from the release's 8080 (the Service's port: every "
            "connected client would lose it); deploy a new release instead") in moved_port.stdout, \
        moved_port.stdout[-5000:]
    assert cluster.writes() == []
    assert newest_report(report_dir, "deploy_app")["outcome"] == "refused"

    # A re-deploy that leaves node_label empty (as the trigger form's default does) keeps the release where it
    # runs and changes what was asked: here the App's replicas.
    kept = dags_test("deploy_app", {key: value for key, value in conf.items() if key != "node_label"} | {"replicas": 2})
    assert kept.returncode == 0, kept.stdout[-5000:]
    assert pods_by_component(kube_client) == {"app": ["node2", "node2"], "db": ["node2"]}


def test_a_first_deploy_without_node_label_is_refused_naming_it(cluster, kube_client, dags_test):
    conf = {key: value for key, value in deploy_conf().items() if key != "node_label"}
    result = dags_test("deploy_app", {**conf, "label_nodes": {}})
    assert result.returncode != 0
    assert 'node_label: required for a new release (default/demo does not exist yet)' in result.stdout, \
        result.stdout[-5000:]
    assert cluster.writes(dry_runs=False) == []
