"""The cncf-kubernetes provider's KubernetesPodOperator, unmodified, on both control planes (issue 14): its pods
run their command (kubesim's sandbox), it follows their logs, reads an XCom through exec in its alpine sidecar
and stops that sidecar with `kill -INT 1`, and a failing command fails the task."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

KPO_DAGS = Path(__file__).parent / "kpo_dag"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("control_plane", ["kubesim", "real"])
def test_kubernetes_pod_operator_runs_commands_pushes_xcom_and_fails_a_failing_one(airflow_cli, tmp_path,
                                                                                   control_plane):
    from kubesim.cluster import Cluster

    record = tmp_path / "record.json"
    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0,
                 work_dir=str(tmp_path / "kubesim"), kubeconfig_path=str(tmp_path / "kubeconfig"),
                 control_plane=control_plane) as cluster:
        result = airflow_cli("dags", "test", "kpo_probe", kubeconfig=cluster.kubeconfig_path,
                             extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(KPO_DAGS), "KPO_RECORD": str(record)})
        leftover = [p["metadata"]["name"] for p in cluster_pods(cluster)]
    outcome = json.loads(record.read_text())
    assert outcome["states"] == {"echo": "success", "pushed": "success", "fails": "failed"}, result.stdout[-4000:]
    assert outcome["xcom"] == {"answer": 42}
    assert "hello from echo" in result.stdout         # the pod's output, followed into the task log
    assert "about to fail" in result.stdout
    assert leftover == []                              # on_finish_action=delete_pod, the failed one too


def cluster_pods(cluster) -> list[dict]:
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(cluster.kubeconfig_path))
    try:
        return api.api_client.sanitize_for_serialization(api.list_namespaced_pod("default"))["items"]
    finally:
        api.api_client.close()
