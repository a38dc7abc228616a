"""One real control plane serving cluster after cluster (what the `cluster` fixture does for the suite): each
Cluster on it starts as a fresh one, whatever the one before it wrote; and the request log the tests read comes
from the API server's audit log, holding what clients asked and nothing of the cluster's own machinery."""
from __future__ import annotations

import json

import pytest

from kubectl_support import kubectl_runner
from realnodes_support import REAL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    from kubesim.addresses import service_cidr
    from kubesim.controlplane import ControlPlane

    with ControlPlane(work_dir=str(tmp_path_factory.mktemp("shared-cp")), service_cidr=service_cidr(37)) as cp:
        yield cp


def cluster_on(shared, work):
    from kubesim.cluster import Cluster

    return Cluster(work_dir=str(work / "kubesim"), kubeconfig_path=str(work / "kubeconfig"),
                   shared_control_plane=shared, **REAL)


def test_each_cluster_on_a_shared_control_plane_starts_fresh(shared, tmp_path):
    with cluster_on(shared, tmp_path / "first") as first:
        kubectl = kubectl_runner(first.kubeconfig_path, str(tmp_path / "home1"), default_timeout=60)
        kubectl("create", "namespace", "shop", check=True)
        kubectl("create", "deployment", "web", "--image=nginx", "--replicas=2", check=True)
        kubectl("create", "configmap", "settings", "-n", "shop", "--from-literal=a=1", check=True)
        kubectl("label", "node", "node1", "demo=node1", check=True)
        kubectl("cordon", "node2", check=True)
        kubectl("wait", "--for=condition=Available", "deployment/web", "--timeout=60s", check=True)

    with cluster_on(shared, tmp_path / "second") as second:
        kubectl = kubectl_runner(second.kubeconfig_path, str(tmp_path / "home2"), default_timeout=60)
        assert "shop" not in kubectl("get", "namespaces", "-o", "name", check=True).stdout
        assert json.loads(kubectl("get", "deployments,replicasets,pods", "-A", "-o", "json",
                                  check=True).stdout)["items"] == []
        nodes = json.loads(kubectl("get", "nodes", "-o", "json", check=True).stdout)["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["node1", "node2"]
        assert all("demo" not in n["metadata"]["labels"] and not n["spec"].get("unschedulable") for n in nodes)
        # What a fresh cluster has is still there, and the same names can be made again.
        kubectl("get", "serviceaccount", "default", "-n", "default", check=True)
        kubectl("get", "configmap", "kube-root-ca.crt", "-n", "default", check=True)
        kubectl("get", "storageclass", "standard", check=True)
        kubectl("create", "namespace", "shop", check=True)
        kubectl("create", "deployment", "web", "--image=nginx", check=True)
        kubectl("wait", "--for=condition=Available", "deployment/web", "--timeout=60s", check=True)


def test_the_request_log_is_the_clients_requests_from_the_audit_log(shared, tmp_path):
    with cluster_on(shared, tmp_path) as cluster:
        kubectl = kubectl_runner(cluster.kubeconfig_path, str(tmp_path / "home"), default_timeout=60)
        kubectl("create", "configmap", "before", "--from-literal=a=1", check=True)
        cluster.clear_request_log()
        assert cluster.writes() == []
        kubectl("create", "configmap", "settings", "--from-literal=a=1", "--dry-run=server", check=True)
        kubectl("create", "configmap", "settings", "--from-literal=a=1", check=True)
        kubectl("get", "configmap", "settings", check=True)
        writes = cluster.writes()
        assert [(w["method"], w["resource"], w["namespace"], w["name"], w["query"].get("dryRun"), w["status"])
                for w in writes] == [("POST", "configmaps", "default", "settings", "All", 201),
                                     ("POST", "configmaps", "default", "settings", None, 201)]
        assert [w["method"] for w in cluster.writes(dry_runs=False)] == ["POST"]
        assert all(w["user_agent"].startswith("kubectl") for w in writes)
        reads = [r for r in cluster.request_log if r["method"] == "GET" and r["resource"] == "configmaps"]
        assert [r["name"] for r in reads] == ["settings"]
        # The nodes renew their Leases and post their status all along; none of that is a client's request.
        assert not [r for r in cluster.request_log if r["resource"] in ("leases", "nodes")]


def test_api_faults_are_refused_on_the_real_control_plane_without_the_faults_proxy(shared, tmp_path):
    with cluster_on(shared, tmp_path) as cluster:
        with pytest.raises(ValueError, match="this cluster has neither .start it with api_faults=True"):
            cluster.faults.add("api-error", verb="list", resource="pods", code="500")
