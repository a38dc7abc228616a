"""A target that cannot take the release: refused before any write, or rolled back to the source.

Each case deploys on node1, makes node2 unable to take the app, runs `airflow dags test migrate_app` and
checks the outcome from the cluster (pods, endpoint), kubesim's request log and the migration report.
"""
from __future__ import annotations

import pytest
from kubernetes.client import CoreV1Api

from k8smove.verify import verify_endpoint
from kubesim_release import pods_by_component
from migration_support import clear_request_log, deploy_conf, newest_report

pytestmark = pytest.mark.slow


@pytest.fixture
def deployed(cluster, kube_client, dags_test):
    """The release Ready on node1; yields its URL."""
    conf = deploy_conf()
    result = dags_test("deploy_app", conf)
    assert result.returncode == 0, result.stdout[-5000:]
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    return f"http://{conf['external_ip']}:{conf['port']}/"


def assert_still_on_source(kube_client, url: str) -> None:
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    assert verify_endpoint(url, deadline_seconds=30)["body"]["node"] == "node1"


def assert_refused(cluster, kube_client, dags_test, report_dir, url: str, reason: str, **conf) -> None:
    clear_request_log(cluster, kube_client)
    result = dags_test("migrate_app", {"node_label": {"demo": "node2"}, **conf})
    assert result.returncode != 0
    assert reason in result.stdout, result.stdout[-5000:]
    assert cluster.writes() == []
    report = newest_report(report_dir)
    assert report["outcome"] == "refused" and reason in report["reason"], report
    assert_still_on_source(kube_client, url)


def test_cordoned_target_is_refused_before_any_write(cluster, kube_client, dags_test, report_dir, deployed):
    CoreV1Api(kube_client).patch_node("node2", {"spec": {"unschedulable": True}})
    assert_refused(cluster, kube_client, dags_test, report_dir, deployed, "node2: cordoned (unschedulable)")


def test_target_without_room_is_refused_before_any_write(cluster, kube_client, dags_test, report_dir, deployed):
    CoreV1Api(kube_client).create_namespaced_pod("default", {
        "metadata": {"name": "hog"},
        "spec": {"nodeName": "node2", "containers": [{"name": "hog", "image": "busybox",
                                                      "resources": {"requests": {"cpu": "3950m"}}}]}})
    assert_refused(cluster, kube_client, dags_test, report_dir, deployed, "node2: insufficient cpu")


def test_a_db_on_node_local_storage_moves_by_switchover_and_is_refused_stop_and_start(
        cluster, kube_client, dags_test, report_dir):
    conf = dict(deploy_conf(), storage={"class": "local-path", "size": "1Gi"})
    result = dags_test("deploy_app", conf)
    assert result.returncode == 0, result.stdout[-5000:]
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    url = f"http://{conf['external_ip']}:{conf['port']}/"
    assert_refused(cluster, kube_client, dags_test, report_dir, url,
                   "PersistentVolumeClaim demo-db is bound to node-local volume", db_strategy="recreate")
    report = newest_report(report_dir)
    assert "(on node1), which no target node (node2) can mount" in report["reason"], report["reason"]
    # the default strategy copies the data to a claim of its own on the target
    result = dags_test("migrate_app", {"node_label": {"demo": "node2"}})
    assert result.returncode == 0, result.stdout[-5000:]
    report = newest_report(report_dir)
    assert report["outcome"] == "moved" and report["db"]["rows_lost"] == 0, report
    assert report["probe"]["writes"]["failed"] == 0 and report["db_switchover"]["write_pause_ms"] > 0, report
    assert report["retired_claims"] == {"removed": ["demo-db"]}
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}


def test_image_never_ready_on_target_rolls_back(cluster, kube_client, dags_test, report_dir, deployed):
    cluster.faults.add("image-never-ready", image="kubesim-demo-app:*", node="node2")
    result = dags_test("migrate_app", {"node_label": {"demo": "node2"}, "timeout_seconds": 15})
    assert result.returncode != 0
    report = newest_report(report_dir)
    assert report["outcome"] == "rolled_back", report
    assert "Rollout not complete after 15s: Deployment demo-app" in report["reason"]
    assert "Readiness" in report["reason"] or "not ready" in report["reason"].lower(), report["reason"]
    assert report["reason"] in result.stdout
    assert report["steps"]["rollback"]["state"] == "success"
    assert report["db"]["rows_lost"] == 0 and report["db"]["rows_acknowledged"] > 0, report["db"]
    assert_still_on_source(kube_client, deployed)
