"""What the end-to-end tests of the DAGs share: reading kubesim and the migration reports."""
from __future__ import annotations

import json
from pathlib import Path

from kubernetes.client import AppsV1Api, CoreV1Api

from kubesim_release import unique_external_ip


def clear_request_log(cluster, kube_client):
    """kubesim logs a request after answering it: one more request first, so nothing earlier is left over."""
    CoreV1Api(kube_client).read_namespace("default")
    cluster.clear_request_log()


def generations(kube_client):
    return {d.metadata.name: (d.metadata.generation, d.metadata.resource_version)
            for d in AppsV1Api(kube_client).list_namespaced_deployment("default").items}


def pods_on(kube_client, node):
    return [p.metadata.name for p in CoreV1Api(kube_client).list_pod_for_all_namespaces().items
            if p.spec.node_name == node]


def deploy_conf():
    return {"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
            "node_label": {"demo": "node1"}, "external_ip": unique_external_ip(), "port": 8080}


def newest_report(report_dir: Path, dag_id: str = "migrate_app") -> dict:
    reports = sorted(report_dir.glob(f"{dag_id}__*.json"), key=lambda p: p.stat().st_mtime)
    assert reports, f"no migration report in {report_dir}"
    return json.loads(reports[-1].read_text())


def assert_moved_without_disruption(report: dict, source: str, target: str) -> None:
    """The migration report proves the move: placement changed, every request answered, no row lost."""
    assert report["outcome"] == "moved", report
    assert set(report["pods_before"]) == {source} and len(report["pods_before"][source]) == 2
    assert set(report["pods_after"]) == {target} and len(report["pods_after"][target]) == 2
    probe = report["probe"]
    assert probe["sent"] >= 20 and probe["failed"] == 0, probe
    assert probe["placements"][0]["node"] == source and probe["placements"][-1]["node"] == target
    db = report["db"]
    assert db["rows_acknowledged"] > 0 and db["rows_lost"] == 0, db
    assert all(report["steps"][t]["state"] == "success" for t in ("preflight", "start_probe", "move", "stop_probe"))
    assert report["steps"]["rollback"]["state"] == "skipped"
    assert report["steps"]["move"]["duration_s"] > 0
