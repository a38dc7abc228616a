"""include/rbac/ grants the k8smove ServiceAccount exactly what deploy_app and migrate_app call.

What they call is read from kubesim's API request log of a full ``airflow dags test`` run — deploy_app,
migrate_app, and a migrate_app that fails and rolls back — and mapped to the RBAC attributes a real
kube-apiserver authorizes: (verb, API group, resource[/subresource], namespace or cluster-wide). The
rules must allow every one of them and nothing else; the node-maintenance block is checked against its
own list until the node_maintenance DAG's calls are in the run.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kubesim.apiserver.routing import truthy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))   # kubesim_release, as tests/dags do

RBAC_DIR = Path(__file__).resolve().parents[2] / "include" / "rbac"
SERVICE_ACCOUNT = ("airflow", "k8smove")           # (namespace, name) the bindings grant to
MAINTENANCE_ROLE = "k8smove-node-maintenance"
# node_maintenance (cordon + evict), as the issue demands: (verb, apiGroup, resource).
MAINTENANCE = {("patch", "", "nodes"), ("create", "", "pods/eviction")}
RBAC_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
# Non-resource paths every authenticated identity may read (system:discovery, system:public-info-viewer).
PUBLIC_PATHS = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz")
ANY = "*any namespace*"


@dataclass(frozen=True)
class Call:
    """One authorization request: namespace None = a cluster-scoped object or a list across namespaces."""
    verb: str
    group: str
    resource: str
    namespace: str | None


@dataclass(frozen=True)
class Grant:
    verb: str
    group: str
    resource: str
    namespace: str      # ANY (ClusterRoleBinding) or the RoleBinding's namespace
    role: str


def calls_of(entry: dict) -> set[Call]:
    """The authorization checks a kube-apiserver makes for one logged request."""
    verb = entry["verb"]
    if verb in ("list", "get") and truthy((entry.get("query") or {}).get("watch")):
        verb = "watch"                       # GET ...?watch=1 is authorized as watch (kubesim logs it so)
    assert verb in RBAC_VERBS, entry
    group, _, resource = entry["resource"].rpartition("/")     # "apps/deployments", "pods"
    if entry["subresource"]:
        resource += "/" + entry["subresource"]
    calls = {Call(verb, group, resource, entry["namespace"])}
    if verb == "patch" and entry["status"] == 201:
        # A server-side apply that creates the object is authorized as create too (kube-apiserver's patch
        # handler checks "create" before creating), so the first deploy needs both verbs.
        calls.add(Call("create", group, resource, entry["namespace"]))
    return calls


def needed_calls(request_log: list[dict]) -> set[Call]:
    calls = set()
    for entry in request_log:
        if not entry["resource"]:
            assert entry["path"].startswith(PUBLIC_PATHS), f"non-resource request {entry['path']}"
            continue
        calls |= calls_of(entry)
    return calls


def rbac_documents() -> list[dict]:
    documents = []
    for path in sorted(RBAC_DIR.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def by_kind(kind: str) -> list[dict]:
    return [d for d in rbac_documents() if d["kind"] == kind]


def grants() -> set[Grant]:
    """What the bindings grant the ServiceAccount; RoleBindings only within their own namespace."""
    roles = {("ClusterRole", None, d["metadata"]["name"]): d for d in by_kind("ClusterRole")}
    roles |= {("Role", d["metadata"]["namespace"], d["metadata"]["name"]): d for d in by_kind("Role")}
    result = set()
    for binding in by_kind("ClusterRoleBinding") + by_kind("RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == SERVICE_ACCOUNT
                   for s in binding["subjects"]):
            continue
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        result.add(Grant(verb, group, resource, namespace or ANY, ref["name"]))
    return result


def allows(grant: Grant, call: Call) -> bool:
    return (grant.verb, grant.group, grant.resource) == (call.verb, call.group, call.resource) and (
        grant.namespace == ANY or grant.namespace == call.namespace)


def justified(grant: Grant, calls: set[Call]) -> bool:
    """Used as granted: a cluster-wide grant by a cluster-wide call, a namespaced one in its namespace."""
    wanted = None if grant.namespace == ANY else grant.namespace
    return Call(grant.verb, grant.group, grant.resource, wanted) in calls


# ---- the manifests themselves ------------------------------------------------------------------------
def test_rbac_manifests_are_valid_kubernetes_objects():
    documents = rbac_documents()
    assert {d["kind"] for d in documents} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                              "RoleBinding"}
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_bindings_grant_the_service_account_roles_defined_here():
    [account] = by_kind("ServiceAccount")
    assert (account["metadata"]["namespace"], account["metadata"]["name"]) == SERVICE_ACCOUNT
    defined = {(d["kind"], d["metadata"]["name"]) for d in by_kind("ClusterRole") + by_kind("Role")}
    bindings = by_kind("ClusterRoleBinding") + by_kind("RoleBinding")
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == defined
    for binding in bindings:
        assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
        assert [(s["kind"], s["namespace"], s["name"]) for s in binding["subjects"]] == [
            ("ServiceAccount", *SERVICE_ACCOUNT)], binding["metadata"]["name"]
        if binding["kind"] == "RoleBinding" and binding["roleRef"]["kind"] == "Role":
            [role] = [r for r in by_kind("Role") if r["metadata"]["name"] == binding["roleRef"]["name"]]
            assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]


def test_rules_name_verbs_and_resources_explicitly():
    for role in by_kind("ClusterRole") + by_kind("Role"):
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, (role["metadata"]["name"], rule)
            assert set(rule["verbs"]) <= RBAC_VERBS, rule
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule


def test_node_maintenance_block_is_exactly_cordon_and_eviction():
    [role] = [r for r in by_kind("ClusterRole") if r["metadata"]["name"] == MAINTENANCE_ROLE]
    granted = {(verb, group, resource) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == MAINTENANCE
    assert {g.namespace for g in grants() if g.role == MAINTENANCE_ROLE} == {ANY}   # bound cluster-wide


def test_request_log_mapping_follows_the_apiserver():
    entry = {"verb": "list", "resource": "apps/deployments", "subresource": None, "namespace": "default",
             "query": {"watch": "1"}, "status": 200, "path": "/apis/apps/v1/namespaces/default/deployments"}
    assert calls_of(entry) == {Call("watch", "apps", "deployments", "default")}
    created = {"verb": "patch", "resource": "secrets", "subresource": None, "namespace": "default",
               "query": {"fieldManager": "k8smove"}, "status": 201, "path": "/api/v1/namespaces/default/secrets/x"}
    assert calls_of(created) == {Call("patch", "", "secrets", "default"), Call("create", "", "secrets", "default")}
    eviction = {"verb": "create", "resource": "pods", "subresource": "eviction", "namespace": "default",
                "query": {}, "status": 201, "path": "/api/v1/namespaces/default/pods/p/eviction"}
    assert calls_of(eviction) == {Call("create", "", "pods/eviction", "default")}


# ---- against what a full run calls -------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run_log(airflow_home, tmp_path_factory):
    """kubesim's request log of deploy_app, migrate_app node1 -> node2, and a migrate_app back to node1
    that times out (pods on node1 never get Ready) and rolls back — each through ``airflow dags test``."""
    from kubesim.cluster import Cluster
    from kubesim_release import unique_external_ip
    from scripts import local_airflow

    work = tmp_path_factory.mktemp("rbac-run")
    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0,
                 work_dir=str(work / "kubesim"), kubeconfig_path=str(work / "kubeconfig")) as cluster:
        env = local_airflow.airflow_environ(airflow_home, cluster.kubeconfig_path, work / "reports")

        def dags_test(dag_id: str, conf: dict):
            return local_airflow.run_airflow(env, "dags", "test", dag_id, "--conf", json.dumps(conf),
                                             timeout=300)

        cluster.clear_request_log()
        deployed = dags_test("deploy_app", {"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
                                            "node_label": {"demo": "node1"}, "external_ip": unique_external_ip(),
                                            "port": 8080})
        assert deployed.returncode == 0, deployed.stdout[-5000:]
        migrated = dags_test("migrate_app", {"node_label": {"demo": "node2"}})
        assert migrated.returncode == 0, migrated.stdout[-5000:]
        cluster.faults.add("slow-startup", node="node1", seconds=120)
        failed = dags_test("migrate_app", {"node_label": {"demo": "node1"}, "timeout_seconds": 10})
        assert failed.returncode != 0 and "Rolled back" in failed.stdout, failed.stdout[-8000:]
        assert "Migration rolled_back" in failed.stdout, failed.stdout[-8000:]
        return list(cluster.request_log)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rbac_allows_every_call_of_a_full_run(full_run_log):
    calls = needed_calls(full_run_log)
    granted = grants()
    denied = sorted((c for c in calls if not any(allows(g, c) for g in granted)), key=str)
    assert denied == [], f"forbidden on a real cluster: {denied}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rbac_grants_nothing_a_full_run_does_not_use(full_run_log):
    calls = needed_calls(full_run_log)
    unused = sorted((g for g in grants() if g.role != MAINTENANCE_ROLE and not justified(g, calls)), key=str)
    assert unused == [], (f"granted but not used (or cluster-wide where a Role would do): {unused}; "
                          f"the run's calls: {sorted(calls, key=str)}")
