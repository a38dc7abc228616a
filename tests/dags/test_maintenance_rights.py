"""node_maintenance and end_maintenance run AS the service account airflow/k8smove (include/rbac/ applied) on the real
control plane: where include/rbac/namespace/ is not applied, the account may not write to workloads (no
cluster-wide write), and the DAGs refuse before their first write, naming the namespace, the verb and resource, what
needs it and the command that grants it; once that namespace is bound, the same runs pass."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubectl_support import kubectl_runner, service_account_kubeconfig  # noqa: E402
from kubesim_release import workload_manifest  # noqa: E402

pytestmark = pytest.mark.slow

RBAC_DIR = Path(__file__).resolve().parents[2] / "include" / "rbac"
SERVICE_ACCOUNT = "system:serviceaccount:airflow:k8smove"
NS = "shop"   # workloads maintenance moves and evicts, not a release's namespace
MANAGED = {"app.kubernetes.io/managed-by": "k8smove"}
RECIPE = f"grant k8smove's maintenance rights there: kubectl apply -n {NS} -f include/rbac/namespace/"


@pytest.fixture
def kubectl(cluster, tmp_path):
    """kubectl as the cluster's admin, with include/rbac/ applied (not include/rbac/namespace/) and NS created."""
    run = kubectl_runner(cluster.kubeconfig_path, str(tmp_path / "kubectl-home"))
    run("create", "namespace", "airflow")
    run("create", "namespace", NS)
    run("apply", "-f", str(RBAC_DIR))
    return run


@pytest.fixture
def as_account(cluster, kubectl, airflow_cli, tmp_path):
    """``airflow dags test <dag> --conf <conf>`` authenticating as the service account (a TokenRequest token)."""
    token = kubectl("create", "token", "k8smove", "-n", "airflow", "--duration=1h").stdout.strip()
    kubeconfig = service_account_kubeconfig(cluster.kubeconfig_path, token, tmp_path / "k8smove.kubeconfig")

    def dags_test(dag_id: str, conf: dict):
        return airflow_cli("dags", "test", dag_id, "--conf", json.dumps(conf), kubeconfig=kubeconfig,
                           extra_env={"KUBECONFIG": kubeconfig, "K8SMOVE_REPORT_DIR": str(tmp_path / "reports")})
    return dags_test


def access_reviews(cluster) -> list[dict]:
    return [r for r in cluster.request_log if r["resource"] == "selfsubjectaccessreviews"]


def test_node_maintenance_refuses_at_plan_where_it_may_not_write(cluster, kubectl, as_account):
    kubectl("cordon", "node2")
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        workload_manifest("Deployment", "web", MANAGED, NS),                 # moved surge-first: deployments patch
        workload_manifest("Deployment", "other", {"team": "other"}, NS)]}))  # evicted: pods/eviction create
    for name in ("web", "other"):
        kubectl("-n", NS, "rollout", "status", f"deployment/{name}", "--timeout=120s", timeout=150)
    kubectl("uncordon", "node2")
    kubectl("label", "node", "node1", "maintenance=scheduled")
    before = kubectl.json("-n", NS, "get", "deployment", "web")["metadata"]["resourceVersion"]
    cluster.clear_request_log()

    refused = as_account("node_maintenance", {})
    assert refused.returncode != 0, refused.stdout[-8000:]
    output = refused.stdout
    assert "The plan cannot empty node1: " in output, output[-8000:]
    assert (f"namespace {NS}: not allowed to patch deployments.apps (needed for Deployment {NS}/web); "
            f"{RECIPE}") in output, output[-8000:]
    assert f"namespace {NS}: not allowed to create pods/eviction (needed for pod {NS}/other-" in output, output[-8000:]
    # nothing written: the API server's audit log has only the account's reads and its two questions
    assert cluster.writes() == [], cluster.writes()
    asked = access_reviews(cluster)
    assert len(asked) == 2 and {r["user"] for r in asked} == {SERVICE_ACCOUNT}, asked
    assert not kubectl.json("get", "node", "node1")["spec"].get("unschedulable")
    assert kubectl.json("-n", NS, "get", "deployment", "web")["metadata"]["resourceVersion"] == before

    # bound in NS, the same plan passes (a dry run: it stops after the plan)
    kubectl("apply", "-n", NS, "-f", str(RBAC_DIR / "namespace"))
    cluster.clear_request_log()
    planned = as_account("node_maintenance", {"dry_run": True})
    assert planned.returncode == 0, planned.stdout[-8000:]
    assert f"move surge    Deployment {NS}/web " in planned.stdout and "not allowed" not in planned.stdout
    assert cluster.writes() == [], cluster.writes()


def test_end_maintenance_refuses_before_uncordoning_where_it_may_not_lift_an_exclusion(cluster, kubectl, as_account):
    from k8smove.maintenance import EXCLUSION_ANNOTATION, MAINTENANCE_FIELD_MANAGER, exclusion_manifest

    kubectl("apply", "-f", "-", input=json.dumps(workload_manifest("Deployment", "web", MANAGED, NS, replicas=0)))
    # what node_maintenance left behind (applied here by the admin): node1 cordoned, labelled ready, web excluding it
    web = kubectl.json("-n", NS, "get", "deployment", "web")
    kubectl("apply", "--server-side", f"--field-manager={MAINTENANCE_FIELD_MANAGER}", "-f", "-",
            input=json.dumps(exclusion_manifest(web, ["node1"], {})))
    kubectl("cordon", "node1")
    kubectl("label", "node", "node1", "maintenance=ready")
    cluster.clear_request_log()

    refused = as_account("end_maintenance", {})
    assert refused.returncode != 0, refused.stdout[-8000:]
    assert (f"Cannot lift the exclusions of node1: namespace {NS}: not allowed to patch deployments.apps (needed for "
            f"Deployment {NS}/web); {RECIPE}") in refused.stdout, refused.stdout[-8000:]
    assert cluster.writes() == [], cluster.writes()
    assert [r["user"] for r in access_reviews(cluster)] == [SERVICE_ACCOUNT]
    assert kubectl.json("get", "node", "node1")["spec"].get("unschedulable") is True

    kubectl("apply", "-n", NS, "-f", str(RBAC_DIR / "namespace"))
    ended = as_account("end_maintenance", {})
    assert ended.returncode == 0, ended.stdout[-8000:]
    node1 = kubectl.json("get", "node", "node1")
    assert not node1["spec"].get("unschedulable") and "maintenance" not in node1["metadata"]["labels"], node1
    assert EXCLUSION_ANNOTATION not in (kubectl.json("-n", NS, "get", "deployment", "web")["metadata"].get(
        "annotations") or {})
