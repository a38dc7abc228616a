"""The k8smove DAGs run AS the ServiceAccount airflow/k8smove against the real kube-apiserver (Node,RBAC) with
include/rbac/ applied: the proof that the rules suffice, made by the DAGs themselves rather than derived from a
request log (tests/deploy/test_rbac.py) or asked of the authorizer (tests/controlplane/test_controlplane_rbac.py).

As admin: include/rbac/ applied, a token of airflow/k8smove requested (TokenRequest) and written into a kubeconfig
of the same server and CA; node2 labelled for maintenance. With that kubeconfig, through ``airflow dags test``:
deploy_app on node1, migrate_app to node2 (the DB by switchover), node_maintenance of node2 moving the release back
to node1, end_maintenance."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))   # kubesim_release, as tests/dags do

from airflow_env import airflow_home  # noqa: E402,F401  (fixture)
from kubectl_support import kubectl_runner  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
RBAC_DIR = ROOT / "include" / "rbac"
SERVICE_ACCOUNT = "system:serviceaccount:airflow:k8smove"
RUNS = ("deploy_app", "migrate_app", "node_maintenance", "end_maintenance")


def service_account_kubeconfig(admin_kubeconfig: str, token: str, path: Path) -> str:
    """The admin kubeconfig's server and CA, authenticating with ``token`` instead of a client certificate."""
    admin = json.loads(Path(admin_kubeconfig).read_text())   # kubesim.controlplane writes it as JSON
    [cluster] = admin["clusters"]
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": cluster["name"], "cluster": {
                  "server": cluster["cluster"]["server"],
                  "certificate-authority-data": cluster["cluster"]["certificate-authority-data"]}}],
              "users": [{"name": "k8smove", "user": {"token": token}}],
              "contexts": [{"name": "k8smove", "context": {"cluster": cluster["name"], "user": "k8smove"}}],
              "current-context": "k8smove"}
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return str(path)


def newest_report(report_dir: Path, dag_id: str) -> dict:
    reports = sorted(report_dir.glob(f"{dag_id}__*.json"), key=lambda p: p.stat().st_mtime)
    assert reports, f"no {dag_id} report in {report_dir}"
    return json.loads(reports[-1].read_text())


@pytest.fixture(scope="module")
def sa_kubeconfig(real_cluster, kubectl, tmp_path_factory) -> str:
    kubectl("create", "namespace", "airflow")
    kubectl("apply", "-f", str(RBAC_DIR))
    token = kubectl("create", "token", "k8smove", "-n", "airflow", "--duration=2h").stdout.strip()
    path = service_account_kubeconfig(real_cluster.kubeconfig_path, token,
                                      tmp_path_factory.mktemp("sa") / "k8smove.kubeconfig")
    as_account = kubectl_runner(path, str(tmp_path_factory.mktemp("sa-kubectl-home")))
    # the token is the service account's, and it holds no more than include/rbac/ grants
    assert as_account("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == SERVICE_ACCOUNT
    assert as_account("auth", "can-i", "create", "clusterrolebindings", check=False).stdout.strip() == "no"
    return path


@pytest.fixture(scope="module")
def runs(real_cluster, kubectl, sa_kubeconfig, airflow_home, tmp_path_factory):  # noqa: F811
    """Each DAG's ``airflow dags test`` output (stdout and stderr) and the report directory, the DAGs
    authenticating as the service account; every run must succeed for the next to mean anything."""
    from kubesim_release import unique_external_ip
    from scripts import local_airflow

    reports = tmp_path_factory.mktemp("reports")
    env = local_airflow.airflow_environ(airflow_home, sa_kubeconfig, reports)
    outputs = {}

    def dags_test(dag_id: str, conf: dict) -> str:
        result = local_airflow.run_airflow(env, "dags", "test", dag_id, "--conf", json.dumps(conf), timeout=600)
        (reports / f"{dag_id}.out").write_text(result.stdout)   # the whole output, for a failure's reader
        assert result.returncode == 0, f"{dag_id} as {SERVICE_ACCOUNT} failed:\n{result.stdout[-8000:]}"
        outputs[dag_id] = result.stdout
        return result.stdout

    dags_test("deploy_app", {"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
                             "node_label": {"demo": "node1"}, "external_ip": unique_external_ip(), "port": 8080})
    dags_test("migrate_app", {"node_label": {"demo": "node2"}})   # db_strategy switchover, the default
    kubectl("label", "node", "node2", "maintenance=scheduled")    # the README's flow, as the cluster's admin
    dags_test("node_maintenance", {"target_selector": {"demo": "node1"}})
    dags_test("end_maintenance", {})
    return {"outputs": outputs, "reports": reports}


def test_each_dag_run_as_the_service_account_did_its_work(runs, kubectl):
    reports = runs["reports"]
    assert newest_report(reports, "deploy_app")["outcome"] == "deployed"
    migrated = newest_report(reports, "migrate_app")
    assert migrated["outcome"] == "moved", migrated
    assert set(migrated["pods_after"]) == {"node2"}, migrated["pods_after"]
    assert migrated["probe"]["sent"] >= 20 and migrated["probe"]["failed"] == 0, migrated["probe"]
    assert migrated["db"]["rows_acknowledged"] > 0 and migrated["db"]["rows_lost"] == 0, migrated["db"]
    maintenance = newest_report(reports, "node_maintenance")
    assert maintenance["outcome"] == "done", maintenance
    release = maintenance["releases"]["default/demo"]
    assert release["outcome"] == "moved", release
    assert set(release["pods_after"]) == {"node1"}, release["pods_after"]
    assert release["probe"]["sent"] >= 20 and release["probe"]["failed"] == 0, release["probe"]
    assert release["db"]["rows_acknowledged"] > 0 and release["db"]["rows_lost"] == 0, release["db"]
    # end_maintenance brought node2 back: schedulable, its maintenance label gone
    node2 = kubectl.json("get", "node", "node2")
    assert not node2["spec"].get("unschedulable") and "maintenance" not in node2["metadata"]["labels"], node2


def test_no_call_of_the_runs_was_forbidden(runs):
    for dag_id in RUNS:
        output = runs["outputs"][dag_id]
        assert "Forbidden" not in output and "forbidden" not in output, (dag_id, output[-8000:])


def test_the_service_account_is_refused_outside_its_rules(runs, kubectl, sa_kubeconfig):
    """With the same kubeconfig: what RBAC does not grant answers 403, and a kube-system Deployment (whose
    placement node_maintenance may change anywhere) cannot be changed beyond that (guard.yaml)."""
    from kubernetes import config
    from kubernetes.client import AppsV1Api, CoreV1Api
    from kubernetes.client.exceptions import ApiException

    kubectl("-n", "kube-system", "create", "deployment", "system-addon", "--image=busybox:1.36", "--replicas=0")
    client = config.new_client_from_config(config_file=sa_kubeconfig)
    apps, core = AppsV1Api(client), CoreV1Api(client)
    refused = {
        "patch a kube-system DaemonSet": lambda: apps.patch_namespaced_daemon_set(
            "kube-proxy", "kube-system", {"spec": {"template": {"spec": {"hostNetwork": True}}}}),
        "delete a kube-system Deployment": lambda: apps.delete_namespaced_deployment("system-addon", "kube-system"),
        "patch a kube-system ConfigMap": lambda: core.patch_namespaced_config_map(
            "kube-root-ca.crt", "kube-system", {"data": {"x": "y"}}),
        "patch a StatefulSet in the release namespace": lambda: apps.patch_namespaced_stateful_set(
            "any", "default", {"spec": {"replicas": 0}}),
        "read the release namespace's Secrets": lambda: core.list_namespaced_secret("default"),
    }
    try:
        for what, call in refused.items():
            with pytest.raises(ApiException) as raised:
                call()
            assert raised.value.status == 403 and f'User \\"{SERVICE_ACCOUNT}\\" cannot' in raised.value.body, \
                (what, raised.value.status, raised.value.body)
        with pytest.raises(ApiException) as raised:
            apps.patch_namespaced_deployment("system-addon", "kube-system", {"spec": {"replicas": 3}})
        body = json.loads(raised.value.body)
        assert raised.value.status == 422 and "k8smove-maintenance-placement-only" in body["message"], body
    finally:
        client.close()
    assert kubectl.json("-n", "kube-system", "get", "deployment", "system-addon")["spec"]["replicas"] == 0
