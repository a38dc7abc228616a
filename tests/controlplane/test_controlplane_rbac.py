"""include/rbac/ enforced by the real API server (Node,RBAC): what the k8smove service account may and may not do.

The allowed table is what tests/deploy/test_rbac.py derives from the DAGs' calls (include/rbac/README.md);
each check is `kubectl auth can-i --as=system:serviceaccount:airflow:k8smove`, and a few are real requests
made impersonating the service account.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

RBAC_DIR = Path(__file__).resolve().parents[2] / "include" / "rbac"
AS = "--as=system:serviceaccount:airflow:k8smove"
RELEASE_NS = "default"
OTHER_NS = "shop"  # a namespace with pods on a node under maintenance, not the release's: include/rbac/namespace/ there
UNBOUND_NS = "unbound"   # a namespace without include/rbac/namespace/: maintenance may read there, never write

# (verb, resource, namespace): None = cluster-scoped, "*" = across all namespaces (-A).
NEEDED = [
    # cluster.yaml: LabelNodes, Preflight, the rollout wait, the maintenance DAGs' cordon/label
    *[(verb, "nodes", None) for verb in ("get", "list", "watch", "patch")],
    ("list", "pods", "*"),
    ("get", "persistentvolumes", None),
    # release.yaml: server-side apply of the release, the rollout wait, events on timeout
    *[(verb, resource, RELEASE_NS) for resource in ("configmaps", "secrets", "services", "persistentvolumeclaims")
      for verb in ("get", "patch", "create")],
    *[(verb, "deployments.apps", RELEASE_NS) for verb in ("get", "list", "watch", "patch", "create", "delete")],
    # the DB switchover: psql by exec in the DB pods; the old instance's Deployment and claim removed
    ("get", "pods/exec", RELEASE_NS), ("create", "pods/exec", RELEASE_NS),
    ("list", "persistentvolumeclaims", RELEASE_NS), ("delete", "persistentvolumeclaims", RELEASE_NS),
    ("list", "statefulsets.apps", RELEASE_NS), ("watch", "statefulsets.apps", RELEASE_NS),
    ("watch", "pods", RELEASE_NS), ("list", "events", RELEASE_NS),
    # the availability probe's Pod: created, read, stopped by exec, its log read, deleted
    *[(verb, "pods", RELEASE_NS) for verb in ("get", "create", "delete")], ("get", "pods/log", RELEASE_NS),
    # node-maintenance.yaml, k8smove-node-maintenance: the reads, wherever the node's pods are
    ("watch", "pods", "*"), ("list", "events", "*"), ("list", "persistentvolumeclaims", "*"),
    ("list", "persistentvolumes", None), ("list", "configmaps", "*"),
    *[(verb, "deployments.apps", "*") for verb in ("get", "list", "watch")],
    ("list", "statefulsets.apps", "*"), ("watch", "statefulsets.apps", "*"),
    # k8smove-node-maintenance-write, bound by include/rbac/namespace/ in OTHER_NS: the writes, there only
    ("create", "pods/eviction", OTHER_NS), ("patch", "deployments.apps", OTHER_NS),
    # every authenticated identity's (system:basic-user): the maintenance plan asks before it writes
    ("create", "selfsubjectaccessreviews.authorization.k8s.io", None),
]

FORBIDDEN = [
    # escalation: grant itself more, act as someone else, mint tokens, read others' credentials
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("create", "clusterroles.rbac.authorization.k8s.io", None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", RELEASE_NS),
    ("create", "roles.rbac.authorization.k8s.io", RELEASE_NS),
    ("patch", "roles.rbac.authorization.k8s.io", RELEASE_NS),
    ("impersonate", "users", None), ("impersonate", "serviceaccounts", RELEASE_NS),
    ("impersonate", "groups", None),
    ("create", "serviceaccounts/token", "kube-system"), ("create", "serviceaccounts/token", RELEASE_NS),
    ("get", "secrets", "kube-system"), ("list", "secrets", "*"), ("list", "secrets", RELEASE_NS),
    ("create", "certificatesigningrequests.certificates.k8s.io", None),
    ("update", "certificatesigningrequests.certificates.k8s.io/approval", None),
    # workloads and nodes beyond the DAGs' calls
    ("create", "pods", OTHER_NS), ("create", "pods", "kube-system"), ("create", "pods/exec", OTHER_NS),
    ("create", "pods/exec", "kube-system"), ("get", "pods/log", "kube-system"),
    ("create", "pods/attach", RELEASE_NS), ("create", "pods/portforward", RELEASE_NS),
    ("delete", "pods", "kube-system"), ("delete", "deployments.apps", OTHER_NS),
    # maintenance's writes outside the namespaces bound for them (no cluster-wide write to workloads)
    ("patch", "deployments.apps", "kube-system"), ("patch", "deployments.apps", UNBOUND_NS),
    ("patch", "deployments.apps", "*"), ("create", "pods/eviction", "kube-system"),
    ("create", "pods/eviction", UNBOUND_NS), ("create", "pods/eviction", "*"),
    ("update", "deployments.apps", OTHER_NS), ("delete", "pods", OTHER_NS),
    ("create", "deployments.apps", "kube-system"), ("delete", "deployments.apps", "kube-system"),
    ("patch", "daemonsets.apps", "kube-system"), ("patch", "statefulsets.apps", RELEASE_NS),
    ("update", "deployments.apps", RELEASE_NS), ("deletecollection", "deployments.apps", RELEASE_NS),
    ("delete", "nodes", None), ("create", "nodes", None), ("update", "nodes/status", None),
    ("patch", "nodes/status", None),
    ("create", "namespaces", None), ("delete", "namespaces", None),
    ("patch", "configmaps", "kube-system"), ("patch", "services", "kube-system"),
    ("create", "persistentvolumes", None), ("delete", "persistentvolumeclaims", OTHER_NS),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", None),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", None),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
]


def _can_i_args(verb: str, resource: str, namespace: str | None) -> list[str]:
    args = ["auth", "can-i", verb]
    name, _, sub = resource.partition("/")
    args.append(name)
    if sub:
        args.append(f"--subresource={sub}")
    if namespace == "*":
        args.append("--all-namespaces")
    elif namespace:
        args += ["-n", namespace]
    return args + [AS]


@pytest.fixture(scope="module")
def rbac_applied(kubectl):
    """include/rbac/ applied as the README says (include/rbac/namespace/ in OTHER_NS only), plus the namespaces and a
    Deployment the checks act on in kube-system, OTHER_NS and UNBOUND_NS."""
    for namespace in ("airflow", OTHER_NS, UNBOUND_NS):
        kubectl("create", "namespace", namespace)
    applied = kubectl("apply", "-f", str(RBAC_DIR)).stdout
    applied += kubectl("apply", "-n", OTHER_NS, "-f", str(RBAC_DIR / "namespace")).stdout
    for namespace in ("kube-system", OTHER_NS):
        kubectl("-n", namespace, "create", "deployment", "system-addon", "--image=busybox:1.36", "--replicas=0")
    return applied


def test_include_rbac_applies_to_a_real_api_server(rbac_applied, kubectl):
    for line in ("serviceaccount/k8smove created", "clusterrole.rbac.authorization.k8s.io/k8smove-cluster created",
                 "clusterrolebinding.rbac.authorization.k8s.io/k8smove-node-maintenance created",
                 "clusterrole.rbac.authorization.k8s.io/k8smove-node-maintenance-write created",
                 "role.rbac.authorization.k8s.io/k8smove-release created",
                 "rolebinding.rbac.authorization.k8s.io/k8smove-release created",
                 "rolebinding.rbac.authorization.k8s.io/k8smove-node-maintenance-write created",
                 "validatingadmissionpolicy.admissionregistration.k8s.io/k8smove-maintenance-placement-only created",
                 "validatingadmissionpolicybinding.admissionregistration.k8s.io/k8smove-probe-pods-only created"):
        assert line in rbac_applied
    # `kubectl apply -f include/rbac/` leaves the opt-in cluster-wide binding of the writes out
    assert "all-namespaces" not in rbac_applied
    assert kubectl("get", "clusterrolebinding", "k8smove-node-maintenance-write-all-namespaces",
                   check=False).returncode == 1
    assert kubectl.json("-n", OTHER_NS, "get", "rolebinding", "k8smove-node-maintenance-write")["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "k8smove-node-maintenance-write"}
    assert kubectl("auth", "whoami", AS, "-o", "jsonpath={.status.userInfo.username}").stdout == \
        "system:serviceaccount:airflow:k8smove"


@pytest.mark.parametrize("verb, resource, namespace", NEEDED, ids=[f"{v}-{r}-{n}" for v, r, n in NEEDED])
def test_service_account_may_make_the_dags_calls(rbac_applied, kubectl, verb, resource, namespace):
    result = kubectl(*_can_i_args(verb, resource, namespace), check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "yes"), result.stderr


@pytest.mark.parametrize("verb, resource, namespace", FORBIDDEN, ids=[f"{v}-{r}-{n}" for v, r, n in FORBIDDEN])
def test_service_account_may_not(rbac_applied, kubectl, verb, resource, namespace):
    result = kubectl(*_can_i_args(verb, resource, namespace), check=False)
    assert (result.returncode, result.stdout.strip()) == (1, "no"), result.stderr


def test_impersonated_server_side_apply_creates_in_the_release_namespace(rbac_applied, kubectl):
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rbac-probe\ndata:\n  a: b\n"
    result = kubectl("-n", RELEASE_NS, "apply", "--server-side", "--field-manager=k8smove", "-f", "-", AS,
                     input=manifest)
    assert "configmap/rbac-probe serverside-applied" in result.stdout
    assert kubectl("-n", RELEASE_NS, "get", "configmap", "rbac-probe", "-o", "jsonpath={.data.a}", AS).stdout == "b"


def test_impersonated_escalations_are_refused(rbac_applied, kubectl):
    attempts = [
        ("create", "clusterrolebinding", "grab", "--clusterrole=cluster-admin",
         "--serviceaccount=airflow:k8smove"),
        ("-n", RELEASE_NS, "create", "rolebinding", "grab", "--clusterrole=admin", "--serviceaccount=airflow:k8smove"),
        ("-n", "kube-system", "delete", "deployment", "system-addon"),
        ("-n", "kube-system", "create", "token", "default"),
        ("-n", "kube-system", "get", "secrets"),
        ("create", "namespace", "grabbed"),
    ]
    for attempt in attempts:
        result = kubectl(*attempt, AS, check=False)
        assert result.returncode == 1, (attempt, result.stdout)
        assert 'is forbidden: User "system:serviceaccount:airflow:k8smove" cannot' in result.stderr, (attempt,
                                                                                                       result.stderr)
    assert kubectl("-n", "kube-system", "get", "deployment", "system-addon", "-o", "name").stdout.strip() == \
        "deployment.apps/system-addon"


def as_service_account(kubectl, *args, manifest: str | None = None):
    return kubectl(*args, AS, input=manifest, check=False)


FORBIDDEN_TO_THE_ACCOUNT = 'is forbidden: User "system:serviceaccount:airflow:k8smove" cannot'


def test_maintenance_writes_only_where_its_namespaced_binding_is(rbac_applied, kubectl):
    """The real requests node_maintenance makes, as the service account: a Deployment's exclusion (server-side apply)
    and a pod's eviction are refused by RBAC (403) in kube-system and in a namespace without include/rbac/namespace/,
    and allowed in the namespace where it is applied."""
    from k8smove.maintenance import MAINTENANCE_FIELD_MANAGER, exclusion_manifest

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "evictable"}, "spec": {
        "containers": [{"name": "c", "image": "busybox:1.36"}]}}   # Pending (no node here): evictable all the same

    def exclude_and_evict(namespace: str) -> tuple:
        kubectl("-n", namespace, "create", "deployment", "placed", "--image=busybox:1.36", "--replicas=0")
        original = kubectl.json("-n", namespace, "get", "deployment", "placed")
        applied = as_service_account(kubectl, "apply", "--server-side", f"--field-manager={MAINTENANCE_FIELD_MANAGER}",
                                     "--force-conflicts", "-f", "-",
                                     manifest=json.dumps(exclusion_manifest(original, ["node1"], {})))
        kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(pod))
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evictable",
                                                                                "namespace": namespace}}
        evicted = as_service_account(kubectl, "create", "--raw",
                                     f"/api/v1/namespaces/{namespace}/pods/evictable/eviction", "-f", "-",
                                     manifest=json.dumps(eviction))
        return applied, evicted

    for namespace in ("kube-system", UNBOUND_NS):
        applied, evicted = exclude_and_evict(namespace)
        assert applied.returncode == 1 and FORBIDDEN_TO_THE_ACCOUNT in applied.stderr \
            and 'cannot patch resource "deployments"' in applied.stderr, (namespace, applied.stderr)
        assert evicted.returncode == 1 and "Forbidden" in evicted.stderr, (namespace, evicted.stderr)
        assert "affinity" not in kubectl.json("-n", namespace, "get", "deployment", "placed")["spec"]["template"][
            "spec"]
        assert kubectl("-n", namespace, "get", "pod", "evictable", "-o", "name").stdout.strip() == "pod/evictable"
    applied, evicted = exclude_and_evict(OTHER_NS)
    assert applied.returncode == 0, applied.stderr
    assert evicted.returncode == 0, evicted.stderr
    assert kubectl.json("-n", OTHER_NS, "get", "deployment", "placed")["spec"]["template"]["spec"]["affinity"]
    gone = kubectl("-n", OTHER_NS, "get", "pod", "evictable", "-o", "jsonpath={.metadata.deletionTimestamp}",
                   check=False)
    assert gone.returncode == 1 or gone.stdout, gone   # deleted, or being deleted


def test_maintenance_may_change_only_the_placement_of_a_deployment_it_did_not_deploy(rbac_applied, kubectl):
    """Where include/rbac/namespace/ grants deployments patch, guard.yaml narrows it: the escalation RBAC alone
    would allow there (a Deployment repointed at a privileged ServiceAccount with another image) is refused, while
    node_maintenance's own exclusion and its lifting pass. In kube-system RBAC refuses every patch (403)."""
    assert kubectl(*_can_i_args("patch", "deployments.apps", OTHER_NS), check=False).stdout.strip() == "yes"
    escalation = ('{"spec": {"template": {"spec": {"serviceAccountName": "clusterrole-aggregation-controller", '
                  '"containers": [{"name": "busybox", "image": "attacker/image:1"}]}}}}')
    for patch, refusal in ((escalation, "may change only the pod template's affinity"),
                           ('{"spec": {"replicas": 3}}', "may not change a Deployment's spec"),
                           ('{"metadata": {"labels": {"app.kubernetes.io/managed-by": "k8smove"}}}',
                            "may change only its own annotation")):
        result = as_service_account(kubectl, "-n", OTHER_NS, "patch", "deployment", "system-addon",
                                    "--type=strategic", "-p", patch)
        assert result.returncode == 1 and "k8smove-maintenance-placement-only" in result.stderr \
            and refusal in result.stderr, (patch, result.stdout, result.stderr)
        refused = as_service_account(kubectl, "-n", "kube-system", "patch", "deployment", "system-addon",
                                     "--type=strategic", "-p", patch)
        assert refused.returncode == 1 and FORBIDDEN_TO_THE_ACCOUNT in refused.stderr, (patch, refused.stderr)
    original = kubectl.json("-n", OTHER_NS, "get", "deployment", "system-addon")

    # node_maintenance's own calls, as the DAG makes them: the exclusion applied, then lifted
    from k8smove.maintenance import MAINTENANCE_FIELD_MANAGER, exclusion_manifest, release_patch

    exclusion = exclusion_manifest(original, ["node1"], {})
    applied = as_service_account(kubectl, "apply", "--server-side", f"--field-manager={MAINTENANCE_FIELD_MANAGER}",
                                 "--force-conflicts", "-f", "-", manifest=json.dumps(exclusion))
    assert applied.returncode == 0, applied.stderr
    excluded = kubectl.json("-n", OTHER_NS, "get", "deployment", "system-addon")
    assert excluded["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    lifted = as_service_account(kubectl, "-n", OTHER_NS, "patch", "deployment", "system-addon", "--type=merge",
                                f"--field-manager={MAINTENANCE_FIELD_MANAGER}", "-p",
                                json.dumps(release_patch(excluded, ["node1"])))
    assert lifted.returncode == 0, lifted.stderr
    after = kubectl.json("-n", OTHER_NS, "get", "deployment", "system-addon")
    assert after["spec"]["template"] == original["spec"]["template"]
    assert after["metadata"].get("labels") == original["metadata"].get("labels")


def test_the_service_account_may_create_only_its_probe_pods(rbac_applied, kubectl):
    """pods create in the release namespace is for start_probe's Pod; guard.yaml admits that shape only."""
    from k8smove.probe_pod import probe_pod

    probe = probe_pod(RELEASE_NS, "demo", "migrate_app", "run-1", "http://10.192.0.1:8080", 20, 5, 60,
                      "python:3.13-alpine", ["node2"])
    created = as_service_account(kubectl, "create", "--dry-run=server", "-f", "-", manifest=json.dumps(probe))
    assert created.returncode == 0 and "pod/demo-k8smove-probe-" in created.stdout, created.stderr
    container = {"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", "cat /token"],
                 "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False}}
    labels = {"app.kubernetes.io/name": "k8smove-probe", "k8smove.io/probe-of": "demo"}
    attempts = {
        "k8smove creates only its availability probe Pods": {"containers": [container],
                                                             "automountServiceAccountToken": False},
        "mounts no service account token": {"containers": [container]},
        "no volume": {"containers": [container], "automountServiceAccountToken": False,
                      "volumes": [{"name": "host", "hostPath": {"path": "/"}}]},
        "no host namespace": {"containers": [container], "automountServiceAccountToken": False,
                              "hostNetwork": True},
        "non-root without privilege escalation": {"automountServiceAccountToken": False, "containers": [
            {**container, "securityContext": {"privileged": True}}]},
    }
    for refusal, spec in attempts.items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "not-a-probe", "namespace": RELEASE_NS,
            "labels": {} if refusal.startswith("k8smove creates") else labels}, "spec": spec}
        result = as_service_account(kubectl, "create", "--dry-run=server", "-f", "-", manifest=json.dumps(pod))
        assert result.returncode == 1 and "k8smove-probe-pods-only" in result.stderr and refusal in result.stderr, \
            (refusal, result.stdout, result.stderr)
