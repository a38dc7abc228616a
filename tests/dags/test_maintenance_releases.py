"""node_maintenance moves k8smove's releases as releases, through the move engine migrate_app uses: the README's
flow (deploy on demo=node1, mark node1, maintenance to demo=node2), the refusal of a release with no target, and
a release another run holds the lock of."""
from __future__ import annotations

import pytest
from kubernetes.client import CoreV1Api

from k8smove import lock
from kubesim_release import pods_by_component
from migration_support import clear_request_log, deploy_conf, newest_report, pods_on

pytestmark = pytest.mark.slow


@pytest.fixture
def release_on_node1(cluster, kube_client, dags_test):
    conf = deploy_conf()
    result = dags_test("deploy_app", conf)
    assert result.returncode == 0, result.stdout[-5000:]
    CoreV1Api(kube_client).patch_node("node1", {"metadata": {"labels": {"maintenance": "scheduled"}}})
    return conf


def test_the_readme_flow_moves_the_release_whole_with_its_proof(cluster, kube_client, dags_test, report_dir,
                                                               release_on_node1):
    dry = dags_test("node_maintenance", {"target_selector": {"demo": "node2"}, "dry_run": True})
    assert dry.returncode == 0, dry.stdout[-5000:]
    assert "move release  release default/demo: app on demo=node1, db on demo=node1 -> demo=node2 (node2)" \
        in dry.stdout, dry.stdout[-5000:]

    result = dags_test("node_maintenance", {"target_selector": {"demo": "node2"}})
    assert result.returncode == 0, result.stdout[-8000:]
    assert pods_on(kube_client, "node1") == []
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    report = newest_report(report_dir, "node_maintenance")
    assert report["outcome"] == "done", report
    release = report["releases"]["default/demo"]
    assert release["outcome"] == "moved", release
    assert release["pods_before"] == {"node1": release["pods_before"]["node1"]}
    assert set(release["pods_after"]) == {"node2"}
    assert release["probe"]["sent"] >= 20 and release["probe"]["failed"] == 0, release["probe"]
    assert release["db"]["rows_acknowledged"] > 0 and release["db"]["rows_lost"] == 0, release["db"]
    assert lock.current(kube_client, "default", "demo") is None
    # The release's recorded placement follows: a later migrate_app starts from node2.
    back = dags_test("migrate_app", {"node_label": {"demo": "node1"}, "dry_run": True})
    assert back.returncode != 0 and "node1: cordoned (unschedulable)" in back.stdout, back.stdout[-5000:]


def test_a_release_with_no_target_is_refused_by_name_before_any_write(cluster, kube_client, dags_test,
                                                                     release_on_node1):
    clear_request_log(cluster, kube_client)
    result = dags_test("node_maintenance", {})
    assert result.returncode != 0
    assert ("release default/demo (default/demo-app-" in result.stdout and
            "no target outside maintenance given; its node_label is demo=node1: set target_selector "
            'to the label of nodes outside maintenance (e.g. {"demo": "<value>"}) or release_targets '
            '{"default/demo": {...}} to say where it goes' in result.stdout), result.stdout[-8000:]
    assert cluster.writes() == []


def test_a_release_locked_by_another_run_is_not_moved(cluster, kube_client, dags_test, report_dir, release_on_node1):
    lock.acquire(kube_client, "default", "demo", "migrate_app/manual__other", 600)
    result = dags_test("node_maintenance", {"target_selector": {"demo": "node2"}})
    assert result.returncode != 0
    report = newest_report(report_dir, "node_maintenance")
    release = report["releases"]["default/demo"]
    assert release["outcome"] == "refused", release
    assert release["reason"].startswith("release default/demo is being moved by migrate_app/manual__other"), release
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}     # never moved by both
    assert lock.current(kube_client, "default", "demo")["spec"]["holderIdentity"] == "migrate_app/manual__other"
