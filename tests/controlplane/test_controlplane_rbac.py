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
OTHER_NS = "shop"  # a namespace with pods on a node under maintenance, not the release's

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
    # node-maintenance.yaml: wherever the node's pods are
    ("create", "pods/eviction", OTHER_NS), ("watch", "pods", "*"), ("list", "events", "*"),
    ("list", "persistentvolumeclaims", "*"), ("list", "persistentvolumes", None),
    *[(verb, "deployments.apps", OTHER_NS) for verb in ("get", "list", "watch", "patch")],
    ("list", "deployments.apps", "*"), ("list", "statefulsets.apps", "*"), ("watch", "statefulsets.apps", OTHER_NS),
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
    """include/rbac/ applied as it is, plus the namespaces and a kube-system Deployment the checks act on."""
    kubectl("create", "namespace", "airflow")
    kubectl("create", "namespace", OTHER_NS)
    applied = kubectl("apply", "-f", str(RBAC_DIR))
    kubectl("-n", "kube-system", "create", "deployment", "system-addon", "--image=busybox:1.36", "--replicas=0")
    return applied.stdout


def test_include_rbac_applies_to_a_real_api_server(rbac_applied, kubectl):
    for line in ("serviceaccount/k8smove created", "clusterrole.rbac.authorization.k8s.io/k8smove-cluster created",
                 "clusterrolebinding.rbac.authorization.k8s.io/k8smove-node-maintenance created",
                 "role.rbac.authorization.k8s.io/k8smove-release created",
                 "rolebinding.rbac.authorization.k8s.io/k8smove-release created",
                 "validatingadmissionpolicy.admissionregistration.k8s.io/k8smove-maintenance-placement-only created",
                 "validatingadmissionpolicybinding.admissionregistration.k8s.io/k8smove-probe-pods-only created"):
        assert line in rbac_applied
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


def test_maintenance_may_change_only_the_placement_of_a_deployment_it_did_not_deploy(rbac_applied, kubectl):
    """k8smove-node-maintenance must patch Deployments in every namespace (RBAC grants that whole), and guard.yaml
    narrows it: the escalation RBAC alone allowed (a kube-system Deployment repointed at a privileged
    ServiceAccount with another image) is refused, while node_maintenance's own exclusion and its lifting pass."""
    assert kubectl(*_can_i_args("patch", "deployments.apps", "kube-system"), check=False).stdout.strip() == "yes"
    escalation = ('{"spec": {"template": {"spec": {"serviceAccountName": "clusterrole-aggregation-controller", '
                  '"containers": [{"name": "busybox", "image": "attacker/image:1"}]}}}}')
    for patch, refusal in ((escalation, "may change only the pod template's affinity"),
                           ('{"spec": {"replicas": 3}}', "may not change a Deployment's spec"),
                           ('{"metadata": {"labels": {"app.kubernetes.io/managed-by": "k8smove"}}}',
                            "may change only its own annotation")):
        result = as_service_account(kubectl, "-n", "kube-system", "patch", "deployment", "system-addon",
                                    "--type=strategic", "-p", patch)
        assert result.returncode == 1 and "k8smove-maintenance-placement-only" in result.stderr \
            and refusal in result.stderr, (patch, result.stdout, result.stderr)
    original = kubectl.json("-n", "kube-system", "get", "deployment", "system-addon")

    # node_maintenance's own calls, as the DAG makes them: the exclusion applied, then lifted
    from k8smove.maintenance import MAINTENANCE_FIELD_MANAGER, exclusion_manifest, release_patch

    exclusion = exclusion_manifest(original, ["node1"], {})
    applied = as_service_account(kubectl, "apply", "--server-side", f"--field-manager={MAINTENANCE_FIELD_MANAGER}",
                                 "--force-conflicts", "-f", "-", manifest=json.dumps(exclusion))
    assert applied.returncode == 0, applied.stderr
    excluded = kubectl.json("-n", "kube-system", "get", "deployment", "system-addon")
    assert excluded["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    lifted = as_service_account(kubectl, "-n", "kube-system", "patch", "deployment", "system-addon", "--type=merge",
                                f"--field-manager={MAINTENANCE_FIELD_MANAGER}", "-p",
                                json.dumps(release_patch(excluded, ["node1"])))
    assert lifted.returncode == 0, lifted.stderr
    after = kubectl.json("-n", "kube-system", "get", "deployment", "system-addon")
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
