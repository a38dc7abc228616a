"""The real kubectl on PATH against the API server: discovery, tables, apply (client and server side),
patches, selectors, create/get/delete."""
from __future__ import annotations

import json

import yaml

from kubesim.resources import DEPLOYMENTS, NODES, PODS

from api_harness import api  # noqa: F401  (fixture)

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports: [{containerPort: 80}]
        env: [{name: A, value: "1"}]
"""


def pod_on(name: str, node: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]}})


def test_version_and_discovery(api):
    version = json.loads(api.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.32.4"
    resources = api.kubectl("api-resources").stdout
    lines = {line.split()[0]: line for line in resources.splitlines()[1:]}
    assert {"pods", "deployments", "services", "nodes", "poddisruptionbudgets", "leases"} <= set(lines)
    assert "deploy" in lines["deployments"] and "apps/v1" in lines["deployments"]
    assert api.kubectl("api-resources", "--namespaced=false", "-o", "name").stdout.split() == \
        ["namespaces", "nodes", "persistentvolumes", "storageclasses.storage.k8s.io"]
    discovery = [r["path"] for r in api.server.request_log if r["path"].startswith(("/api", "/apis"))]
    assert set(discovery) == {"/api", "/apis"}  # aggregated discovery: no per-group-version documents


def test_get_nodes_wide_label_and_cordon(api):
    out = api.kubectl("get", "nodes", "-o", "wide").stdout.splitlines()
    assert out[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP",
                              "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert out[1].split()[:3] == ["node1", "Ready", "<none>"] and "127.0.1.1" in out[1]
    assert "node/node1 labeled" in api.kubectl("label", "node", "node1", "zone=a").stdout
    assert api.kubectl("get", "nodes", "-l", "zone=a", "-o", "name").stdout.split() == ["node/node1"]
    assert api.kubectl("get", "nodes", "-l", "zone notin (a),!missing", "-o", "name").stdout.split() == \
        ["node/node2"]
    assert "cordoned" in api.kubectl("cordon", "node1").stdout
    assert api.store.get(NODES, None, "node1")["spec"]["unschedulable"] is True
    assert "Ready,SchedulingDisabled" in api.kubectl("get", "node", "node1").stdout
    assert "uncordoned" in api.kubectl("uncordon", "node1").stdout
    assert not api.store.get(NODES, None, "node1")["spec"].get("unschedulable")
    patches = [r for r in api.server.request_log if r["method"] == "PATCH"]
    assert [(r["resource"], r["name"]) for r in patches] == [("nodes", "node1")] * 3


def test_client_side_apply_twice_is_unchanged(api):
    assert "deployment.apps/web created" in api.kubectl("apply", "-f", "-", input=DEPLOYMENT).stdout
    rv = api.store.get(DEPLOYMENTS, "default", "web")["metadata"]["resourceVersion"]
    assert "deployment.apps/web unchanged" in api.kubectl("apply", "-f", "-", input=DEPLOYMENT).stdout
    assert api.store.get(DEPLOYMENTS, "default", "web")["metadata"]["resourceVersion"] == rv
    changed = DEPLOYMENT.replace("replicas: 2", "replicas: 3").replace('"1"', '"2"')
    result = api.kubectl("apply", "-f", "-", input=changed)
    assert "deployment.apps/web configured" in result.stdout and "warning" not in result.stderr.lower()
    deployment = api.store.get(DEPLOYMENTS, "default", "web")
    assert deployment["spec"]["replicas"] == 3 and deployment["metadata"]["generation"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "A", "value": "2"}]
    writes = [r for r in api.server.request_log if r["method"] in ("POST", "PATCH")]
    assert [r["query"].get("fieldValidation") for r in writes] == ["Strict", "Strict"]


def test_strict_field_validation_rejects_unknown_fields(api):
    bad = DEPLOYMENT.replace("replicas: 2", "replicas: 2\n  replicaz: 3")
    result = api.kubectl("apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0
    assert 'strict decoding error: unknown field "spec.replicaz"' in result.stderr


def test_server_side_apply_conflict_and_force(api):
    api.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    three = DEPLOYMENT.replace("replicas: 2", "replicas: 3")
    conflict = api.kubectl("apply", "--server-side", "-f", "-", input=three, check=False)
    assert conflict.returncode != 0
    assert 'conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas' in conflict.stderr
    assert "serverside-applied" in api.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                                               input=three).stdout
    deployment = api.store.get(DEPLOYMENTS, "default", "web")
    assert deployment["spec"]["replicas"] == 3
    owners = {e["manager"]: e for e in deployment["metadata"]["managedFields"]}
    assert "f:replicas" in owners["kubectl"]["fieldsV1"]["f:spec"] and owners["kubectl"]["operation"] == "Apply"
    assert "f:replicas" not in owners["kubectl-client-side-apply"]["fieldsV1"]["f:spec"]
    rv = deployment["metadata"]["resourceVersion"]
    api.kubectl("apply", "--server-side", "-f", "-", input=three)  # identical config: a no-op
    again = api.store.get(DEPLOYMENTS, "default", "web")
    assert again["metadata"]["resourceVersion"] == rv and again["metadata"]["generation"] == 2


def test_server_side_apply_creates(api):
    result = api.kubectl("apply", "--server-side", "-f", "-", input=pod_on("ssa", "node1"))
    assert "pod/ssa serverside-applied" in result.stdout
    pod = api.store.get(PODS, "default", "ssa")
    assert pod["metadata"]["managedFields"][0]["manager"] == "kubectl"
    assert pod["spec"]["restartPolicy"] == "Always"


def test_patch_types(api):
    api.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    api.kubectl("patch", "deployment", "web", "--type", "merge", "-p", '{"spec":{"replicas":5}}')
    assert api.store.get(DEPLOYMENTS, "default", "web")["spec"]["replicas"] == 5
    api.kubectl("patch", "deployment", "web", "--type", "json",
                "-p", '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:1.28"}]')
    api.kubectl("patch", "deployment", "web", "--type", "strategic", "-p",
                '{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"},'
                '{"name":"nginx","env":[{"name":"B","value":"b"}]}]}}}}')
    containers = api.store.get(DEPLOYMENTS, "default", "web")["spec"]["template"]["spec"]["containers"]
    # upstream order (apimachinery normalizeElementOrder): the patch's items in the patch's order, new ones first
    assert [c["name"] for c in containers] == ["sidecar", "nginx"]
    assert containers[1]["image"] == "nginx:1.28"
    assert containers[1]["env"] == [{"name": "B", "value": "b"}, {"name": "A", "value": "1"}]
    bad = api.kubectl("patch", "deployment", "web", "--type", "json", "-p", '[{"op":"remove","path":"/nope"}]',
                      check=False)
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_create_get_yaml_field_selector_and_delete(api):
    assert "pod/a created" in api.kubectl("create", "-f", "-", input=pod_on("a", "node1")).stdout
    api.kubectl("create", "-f", "-", input=pod_on("b", "node2"))
    pod = yaml.safe_load(api.kubectl("get", "pod", "a", "-o", "yaml").stdout)
    assert pod["spec"]["nodeName"] == "node1" and pod["spec"]["dnsPolicy"] == "ClusterFirst"
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30 and pod["status"]["phase"] == "Pending"
    lines = api.kubectl("get", "pods", "-o", "wide", "--field-selector", "spec.nodeName=node1").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED",
                                "NODE", "READINESS", "GATES"]
    assert [line.split()[:3] for line in lines[1:]] == [["a", "0/1", "Pending"]]
    assert lines[1].split()[6] == "node1"
    deleted = api.kubectl("delete", "pod", "a", "--grace-period=0", "--force")
    assert 'pod "a" force deleted' in deleted.stdout
    assert api.store.find(PODS, "default", "a") is None
    assert api.kubectl("get", "pods", "-o", "name").stdout.split() == ["pod/b"]
    missing = api.kubectl("get", "pod", "a", check=False)
    assert missing.returncode == 1 and 'pods "a" not found' in missing.stderr


def test_tables_for_workloads_and_services(api):
    api.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    api.kubectl("create", "service", "nodeport", "web", "--tcp=80:8080")
    header = api.kubectl("get", "deployments").stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    services = api.kubectl("get", "svc", "web").stdout.splitlines()
    assert services[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    name, kind, ip, external, ports, _ = services[1].split()
    assert (name, kind, external) == ("web", "NodePort", "<none>") and ip.startswith("127.96.")
    assert ports.startswith("80:") and ports.endswith("/TCP")
    assert api.kubectl("get", "events").stderr.strip() == "No resources found in default namespace."


def test_typed_commands_send_protobuf(api):
    api.kubectl("create", "deployment", "web", "--image=nginx:1.27", "--replicas=2")
    api.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080")
    api.kubectl("create", "secret", "generic", "creds", "--from-literal=password=s3cret")
    deployment = api.store.get(DEPLOYMENTS, "default", "web")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert "creationTimestamp" not in deployment["spec"]["template"]["metadata"]
    service = api.kubectl_json("get", "service", "web")
    assert service["spec"]["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    assert api.kubectl_json("get", "secret", "creds")["data"] == {"password": "czNjcmV0"}
    creates = [r for r in api.server.request_log if r["method"] == "POST"]
    assert [r["query"]["fieldManager"] for r in creates] == ["kubectl-create"] * 3


def test_drain_evicts_through_the_eviction_subresource(api):
    quick = yaml.safe_load(pod_on("quick", "node1"))
    quick["spec"]["terminationGracePeriodSeconds"] = 0  # no kubelet here to finish a graceful deletion
    api.kubectl("create", "-f", "-", input=yaml.safe_dump(quick))
    api.kubectl("create", "-f", "-", input=pod_on("stays", "node2"))
    result = api.kubectl("drain", "node1", "--force", "--timeout=20s")
    assert "node/node1 drained" in result.stdout and "pod/quick evicted" in result.stdout
    assert api.store.find(PODS, "default", "quick") is None
    assert api.store.get(NODES, None, "node1")["spec"]["unschedulable"] is True
    evictions = [r for r in api.server.request_log if r["subresource"] == "eviction"]
    assert [(r["verb"], r["name"], r["status"]) for r in evictions] == [("create", "quick", 201)]


def test_logs_follow_until_the_pod_finishes(api, tmp_path):
    log = tmp_path / "c.log"
    log.write_text("2026-01-01T00:00:00.000000000Z stdout F started\n2026-01-01T00:00:01.000000000Z stdout F finished\n")

    class Runtime:
        def log_path(self, pod_uid, container, instance=None):
            return str(log)

        def running(self, pod_uid, container, instance):
            return False

    api.server.runtime = Runtime()
    api.kubectl("create", "-f", "-", input=pod_on("job", "node1"))
    api.store.mutate(PODS, "default", "job", lambda pod: pod["status"].update(
        phase="Succeeded", containerStatuses=[{"name": "c", "ready": False, "restartCount": 0, "image": "busybox",
                                               "imageID": "", "containerID": "kubesim://0123abcd-c-0",
                                               "state": {"terminated": {"exitCode": 0,
                                                                        "containerID": "kubesim://0123abcd-c-0"}}}]),
                    subresource="status")
    assert api.kubectl("logs", "-f", "job").stdout == "started\nfinished\n"
