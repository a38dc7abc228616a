"""include/rbac/ grants the k8smove ServiceAccount exactly what the k8smove DAGs call.

What they call is read from kubesim's API request log of ``airflow dags test`` runs — deploy_app,
migrate_app, a migrate_app that fails and rolls back; then node_maintenance (dry run and real) and
end_maintenance — and mapped to the RBAC attributes a real kube-apiserver authorizes: (verb, API group,
resource[/subresource], namespace or cluster-wide). The rules must allow every one of them and nothing else:
k8smove-cluster and the release Role exactly deploy_app/migrate_app's calls; of what the maintenance DAGs call
beyond those, k8smove-node-maintenance (bound cluster-wide) exactly the reads, and k8smove-node-maintenance-write
exactly the writes, allowed only in the namespace where include/rbac/namespace/'s RoleBinding is applied.
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

from kubesim_release import workload_manifest  # noqa: E402

RBAC_DIR = Path(__file__).resolve().parents[2] / "include" / "rbac"
PER_NAMESPACE_DIR = RBAC_DIR / "namespace"      # applied with `kubectl apply -n <namespace> -f`
OPTIONAL_DIR = RBAC_DIR / "optional"            # opt-in, not applied by `kubectl apply -f include/rbac/`
SERVICE_ACCOUNT = ("airflow", "k8smove")           # (namespace, name) the bindings grant to
MAINTENANCE_ROLE = "k8smove-node-maintenance"              # the maintenance DAGs' reads, cluster-wide
MAINTENANCE_WRITE_ROLE = "k8smove-node-maintenance-write"  # their writes, bound per namespace
MAINTENANCE_ROLES = (MAINTENANCE_ROLE, MAINTENANCE_WRITE_ROLE)
RBAC_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
READ_VERBS = {"get", "list", "watch"}
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


# What every authenticated identity may do on any cluster (bootstrap ClusterRole system:basic-user): the maintenance
# DAGs ask with SelfSubjectAccessReviews whether they may write where their plan would, before any write.
DEFAULT_GRANTS = {Grant("create", "authorization.k8s.io", "selfsubjectaccessreviews", ANY, "system:basic-user")}


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
    if resource == "pods/exec":
        # a WebSocket exec is a GET; since 1.35 kube-apiserver also asks for create (KEP-4006,
        # AuthorizePodWebsocketUpgradeCreatePermission)
        calls.add(Call("create", group, resource, entry["namespace"]))
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


def documents_in(directory: Path) -> list[dict]:
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def per_namespace_documents(namespace: str) -> list[dict]:
    """include/rbac/namespace/ as `kubectl apply -n <namespace>` creates it: each object in that namespace."""
    documents = documents_in(PER_NAMESPACE_DIR)
    for document in documents:
        assert "namespace" not in document["metadata"], document   # kubectl -n gives it (and would refuse another)
    return [{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in documents]


def rbac_documents() -> list[dict]:
    """What the run's cluster holds: include/rbac/ applied, and include/rbac/namespace/ in MAINTENANCE_NAMESPACE
    (the one namespace whose workloads the maintenance runs move or evict); not include/rbac/optional/."""
    return documents_in(RBAC_DIR) + per_namespace_documents(MAINTENANCE_NAMESPACE)


def by_kind(kind: str) -> list[dict]:
    return [d for d in rbac_documents() if d["kind"] == kind]


def grants() -> set[Grant]:
    """What the bindings grant the ServiceAccount; RoleBindings only within their own namespace."""
    roles = {("ClusterRole", None, d["metadata"]["name"]): d for d in by_kind("ClusterRole")}
    roles |= {("Role", d["metadata"]["namespace"], d["metadata"]["name"]): d for d in by_kind("Role")}
    result = set(DEFAULT_GRANTS)
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
    documents = rbac_documents() + documents_in(OPTIONAL_DIR)
    assert {d["kind"] for d in documents} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                              "RoleBinding", "ValidatingAdmissionPolicy",
                                              "ValidatingAdmissionPolicyBinding"}   # guard.yaml
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_maintenance_writes_are_bound_per_namespace_and_cluster_wide_only_by_the_opt_in_file():
    """`kubectl apply -f include/rbac/` binds no write to workloads cluster-wide: k8smove-node-maintenance-write is
    bound by include/rbac/namespace/'s RoleBinding (in the namespace it is applied to) and, cluster-wide, only by
    include/rbac/optional/, which says why that is dangerous."""
    applied = documents_in(RBAC_DIR)
    cluster_roles = {d["metadata"]["name"]: d for d in applied if d["kind"] == "ClusterRole"}
    for binding in (d for d in applied if d["kind"] == "ClusterRoleBinding"):
        rules = cluster_roles[binding["roleRef"]["name"]]["rules"]
        # k8smove-cluster's nodes patch (cordon, labels) is the one cluster-wide write, and on nodes only
        writing = [r for r in rules if set(r["verbs"]) - READ_VERBS]
        assert all(r["resources"] == ["nodes"] and set(r["verbs"]) - READ_VERBS == {"patch"} for r in writing), \
            (binding["metadata"]["name"], rules)
    assert {v for r in cluster_roles[MAINTENANCE_ROLE]["rules"] for v in r["verbs"]} <= READ_VERBS
    [per_namespace] = documents_in(PER_NAMESPACE_DIR)
    assert (per_namespace["kind"], per_namespace["roleRef"]["kind"], per_namespace["roleRef"]["name"]) == (
        "RoleBinding", "ClusterRole", MAINTENANCE_WRITE_ROLE)
    [optional] = documents_in(OPTIONAL_DIR)
    assert (optional["kind"], optional["roleRef"]["name"]) == ("ClusterRoleBinding", MAINTENANCE_WRITE_ROLE)
    assert [(s["kind"], s["namespace"], s["name"]) for s in optional["subjects"]] == [("ServiceAccount",
                                                                                       *SERVICE_ACCOUNT)]
    assert "WARNING" in next(OPTIONAL_DIR.glob("*.yaml")).read_text().splitlines()[0]


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
    exec_ = {"verb": "get", "resource": "pods", "subresource": "exec", "namespace": "default",
             "query": {"command": ["psql"]}, "status": 101, "path": "/api/v1/namespaces/default/pods/p/exec"}
    assert calls_of(exec_) == {Call("get", "", "pods/exec", "default"), Call("create", "", "pods/exec", "default")}
    review = {"verb": "create", "resource": "authorization.k8s.io/selfsubjectaccessreviews", "subresource": None,
              "namespace": None, "query": {}, "status": 201,
              "path": "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"}
    assert calls_of(review) == {Call("create", "authorization.k8s.io", "selfsubjectaccessreviews", None)}


# ---- against what a full run calls -------------------------------------------------------------------
MANAGED = {"app.kubernetes.io/managed-by": "k8smove"}
MAINTENANCE_NAMESPACE = "shop"   # not the release namespace: the maintenance DAGs act wherever pods are


def _start_maintenance_workloads(kubeconfig: str) -> None:
    """In MAINTENANCE_NAMESPACE, all on node1 (node2 cordoned meanwhile): a k8smove Deployment, a k8smove
    StatefulSet on a network-attached volume and an unmanaged Deployment; then node1 is marked for maintenance."""
    import time

    from kubernetes import config
    from kubernetes.client import AppsV1Api, CoreV1Api

    client = config.new_client_from_config(config_file=kubeconfig)
    core, apps = CoreV1Api(client), AppsV1Api(client)
    ns = MAINTENANCE_NAMESPACE
    core.patch_node("node2", {"spec": {"unschedulable": True}})
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    apps.create_namespaced_deployment(ns, workload_manifest("Deployment", "web", MANAGED))
    apps.create_namespaced_stateful_set(ns, workload_manifest("StatefulSet", "db", MANAGED))
    apps.create_namespaced_deployment(ns, workload_manifest("Deployment", "other", {"team": "other"}))
    deadline = time.monotonic() + 60
    while True:
        pods = core.list_namespaced_pod(ns).items
        ready = [p for p in pods if p.spec.node_name == "node1" and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        if len(ready) == 3:
            break
        assert time.monotonic() < deadline, [(p.metadata.name, p.spec.node_name, p.status.phase) for p in pods]
        time.sleep(0.2)
    core.patch_node("node2", {"spec": {"unschedulable": None}})
    core.patch_node("node1", {"metadata": {"labels": {"maintenance": "scheduled"}}})


def _label_node(kubeconfig: str, node: str, labels: dict) -> None:
    from kubernetes import config
    from kubernetes.client import CoreV1Api

    CoreV1Api(config.new_client_from_config(config_file=kubeconfig)).patch_node(node, {"metadata": {"labels": labels}})


@pytest.fixture(scope="module")
def run_logs(airflow_home, tmp_path_factory) -> dict[str, list[dict]]:
    """kubesim's request logs, each DAG through ``airflow dags test`` on one cluster:

    - "release": deploy_app, migrate_app node1 -> node2 (the DB by switchover), back to node1 stop-and-start
      (db_strategy recreate), to node2 again, and a migrate_app back to node1 that times out (pods on node1 never
      get Ready) and rolls back;
    - "maintenance": with a k8smove Deployment, a k8smove StatefulSet and an unmanaged Deployment on node1
      (namespace MAINTENANCE_NAMESPACE) and node1 labelled maintenance=scheduled: node_maintenance as a dry
      run, then for real, then end_maintenance; then node_maintenance of node2 (the release with them) back to
      a node1 that starts no pod in time, so the moves time out (and read the cluster's reasons) and the
      release's move is rolled back.
    The test's own setup calls (creating the workloads, labelling the nodes) are not in them."""
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
        migrated = dags_test("migrate_app", {"node_label": {"demo": "node2"}})   # the DB by switchover
        assert migrated.returncode == 0, migrated.stdout[-5000:]
        recreated = dags_test("migrate_app", {"node_label": {"demo": "node1"}, "db_strategy": "recreate"})
        assert recreated.returncode == 0, recreated.stdout[-5000:]
        back = dags_test("migrate_app", {"node_label": {"demo": "node2"}})
        assert back.returncode == 0, back.stdout[-5000:]
        cluster.faults.add("slow-startup", node="node1", seconds=120)
        failed = dags_test("migrate_app", {"node_label": {"demo": "node1"}, "timeout_seconds": 10})
        assert failed.returncode != 0 and "Rolled back" in failed.stdout, failed.stdout[-8000:]
        assert "Migration rolled_back" in failed.stdout, failed.stdout[-8000:]
        release = list(cluster.request_log)

        cluster.faults.clear(kind="slow-startup")
        _start_maintenance_workloads(cluster.kubeconfig_path)   # the release stays on node2
        cluster.clear_request_log()
        dry = dags_test("node_maintenance", {"dry_run": True})
        assert dry.returncode == 0, dry.stdout[-5000:]
        assert cluster.writes() == [], cluster.writes()   # the access reviews store nothing
        assert [r["resource"] for r in cluster.request_log if r["method"] == "POST"] == [
            "authorization.k8s.io/selfsubjectaccessreviews"] * 2   # shop: deployments patch, pods/eviction create
        for line in (f"move surge    Deployment {MAINTENANCE_NAMESPACE}/web ",
                     f"move recreate StatefulSet {MAINTENANCE_NAMESPACE}/db ",
                     f"evict    pod {MAINTENANCE_NAMESPACE}/other-"):
            assert line in dry.stdout, dry.stdout[-5000:]
        drained = dags_test("node_maintenance", {})
        assert drained.returncode == 0, drained.stdout[-8000:]
        ended = dags_test("end_maintenance", {})
        assert ended.returncode == 0, ended.stdout[-5000:]
        maintenance = list(cluster.request_log)
        # Back to node1, which now starts no pod in time: each move times out and reports the cluster's reasons.
        cluster.faults.add("slow-startup", node="node1", seconds=120)
        _label_node(cluster.kubeconfig_path, "node2", {"maintenance": "scheduled"})
        cluster.clear_request_log()
        timed_out = dags_test("node_maintenance", {"timeout_seconds": 10, "target_selector": {"demo": "node1"}})
        assert timed_out.returncode != 0, timed_out.stdout[-8000:]
        assert "Rollout not complete after 10s" in timed_out.stdout, timed_out.stdout[-8000:]
        return {"release": release, "maintenance": maintenance + list(cluster.request_log)}


@pytest.fixture(scope="module")
def full_run_log(run_logs):
    return run_logs["release"] + run_logs["maintenance"]


def maintenance_increment(run_logs) -> set[Call]:
    """What node_maintenance/end_maintenance call that deploy_app/migrate_app's roles (and every identity's
    defaults) do not allow."""
    others = {g for g in grants() if g.role not in MAINTENANCE_ROLES}
    return {c for c in needed_calls(run_logs["maintenance"]) if not any(allows(g, c) for g in others)}


def rules_of(cluster_role: str) -> set[tuple[str, str, str]]:
    [role] = [r for r in by_kind("ClusterRole") if r["metadata"]["name"] == cluster_role]
    return {(verb, group, resource) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rbac_allows_every_call_of_a_full_run(full_run_log):
    calls = needed_calls(full_run_log)
    granted = grants()
    denied = sorted((c for c in calls if not any(allows(g, c) for g in granted)), key=str)
    assert denied == [], f"forbidden on a real cluster: {denied}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rbac_grants_nothing_a_full_run_does_not_use(run_logs):
    """deploy_app/migrate_app's roles against their own calls: each grant used as granted (namespaced in the
    release namespace, cluster-wide only by a cluster-wide call)."""
    calls = needed_calls(run_logs["release"])
    unused = sorted((g for g in grants() - DEFAULT_GRANTS if g.role not in MAINTENANCE_ROLES
                     and not justified(g, calls)), key=str)
    assert unused == [], (f"granted but not used (or cluster-wide where a Role would do): {unused}; "
                          f"the run's calls: {sorted(calls, key=str)}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_node_maintenance_roles_are_exactly_what_the_maintenance_dags_add(run_logs):
    """Of the calls of node_maintenance (dry run and real) and end_maintenance that the other roles do not allow:
    k8smove-node-maintenance, bound cluster-wide, holds exactly the reads (the plan looks in every namespace);
    k8smove-node-maintenance-write exactly the writes, and they are allowed only by the RoleBinding in the namespace
    whose workloads were moved and evicted — nothing more, nothing the other roles already grant."""
    calls = needed_calls(run_logs["maintenance"])
    added = maintenance_increment(run_logs)
    reads = {c for c in added if c.verb in READ_VERBS}
    writes = added - reads
    assert rules_of(MAINTENANCE_ROLE) == {(c.verb, c.group, c.resource) for c in reads}, \
        f"the maintenance run's calls: {sorted(calls, key=str)}"
    assert rules_of(MAINTENANCE_WRITE_ROLE) == {(c.verb, c.group, c.resource) for c in writes}, \
        f"the maintenance run's calls: {sorted(calls, key=str)}"
    assert {g.namespace for g in grants() if g.role == MAINTENANCE_ROLE} == {ANY}   # bound cluster-wide
    assert {g.namespace for g in grants() if g.role == MAINTENANCE_WRITE_ROLE} == {MAINTENANCE_NAMESPACE}
    assert {c.namespace for c in writes} == {MAINTENANCE_NAMESPACE}, sorted(writes, key=str)
    write_grants = {g for g in grants() if g.role == MAINTENANCE_WRITE_ROLE}
    for write in writes:   # allowed there, and only by the RoleBinding of that namespace
        assert any(allows(g, write) for g in write_grants), write
        assert not any(allows(g, Call(write.verb, write.group, write.resource, "kube-system")) for g in grants()), \
            write
