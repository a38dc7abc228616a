"""Subresources (status, scale, binding, eviction, log), server-side apply and patches through the real
kubernetes client, and Table output."""
from __future__ import annotations

import json

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubesim.resources import CONFIGMAPS, DEPLOYMENTS, PODS
from kubesim.runtime import SimulatedRuntime

from manifests import manifest
from api_harness import api, client  # noqa: F401  (fixtures)
from test_api_errors import request

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def test_status_subresource_changes_only_status(api, client):
    core = k8s.CoreV1Api(client)
    pod = core.create_namespaced_pod("default", manifest("pods", "p"))
    pod.status.phase = "Running"
    pod.spec.containers[0].image = "ignored:1"
    updated = core.replace_namespaced_pod_status("p", "default", pod)
    assert updated.status.phase == "Running" and updated.spec.containers[0].image == "nginx:1.27"
    patched = core.patch_namespaced_pod_status("p", "default", {"status": {"podIP": "127.1.0.5"}})
    assert patched.status.pod_ip == "127.1.0.5" and patched.status.phase == "Running"
    managers = {(e.manager, e.subresource) for e in patched.metadata.managed_fields}
    assert ("OpenAPI-Generator", "status") in managers
    pod = core.read_namespaced_pod("p", "default")
    pod.status.phase = "Failed"
    assert core.replace_namespaced_pod("p", "default", pod).status.phase == "Running"  # main resource ignores it


def test_scale_subresource(api, client):
    apps = k8s.AppsV1Api(client)
    apps.create_namespaced_deployment("default", manifest("apps/deployments", "web"))
    scale = apps.read_namespaced_deployment_scale("web", "default")
    assert scale.spec.replicas == 1 and scale.status.selector == "app=demo"
    scale.spec.replicas = 4
    assert apps.replace_namespaced_deployment_scale("web", "default", scale).spec.replicas == 4
    assert apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 2}}).spec.replicas == 2
    deployment = api.store.get(DEPLOYMENTS, "default", "web")
    assert deployment["spec"]["replicas"] == 2 and deployment["metadata"]["generation"] == 3
    with pytest.raises(ApiException) as invalid:
        apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": -1}})
    assert invalid.value.status == 422


def test_binding_sets_the_node(api, client):
    core = k8s.CoreV1Api(client)
    core.create_namespaced_pod("default", manifest("pods", "p"))
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node",
                                                                                          "name": "node2"}}
    status, _ = request(api, "POST", "/api/v1/namespaces/default/pods/p/binding", json.dumps(body))
    assert status == 201 and api.store.get(PODS, "default", "p")["spec"]["nodeName"] == "node2"
    status, again = request(api, "POST", "/api/v1/namespaces/default/pods/p/binding", json.dumps(body))
    assert status == 409 and "already assigned" in again["message"]


def test_eviction_respects_disruption_budgets(api, client):
    core, policy = k8s.CoreV1Api(client), k8s.PolicyV1Api(client)
    for name in ("a", "b"):
        pod = manifest("pods", name, labels={"app": "demo"})
        core.create_namespaced_pod("default", pod)
    core.create_namespaced_pod_eviction("a", "default", {"metadata": {"name": "a", "namespace": "default"}})
    assert api.store.find(PODS, "default", "a") is None
    policy.create_namespaced_pod_disruption_budget("default", manifest("policy/poddisruptionbudgets", "pdb"))
    # What the disruption controller would report: b is the one healthy pod the budget needs.
    policy.patch_namespaced_pod_disruption_budget_status("pdb", "default", {"status": {
        "observedGeneration": 1, "disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1,
        "expectedPods": 1}})
    core.patch_namespaced_pod_status("b", "default", {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod_eviction("b", "default", {"metadata": {"name": "b", "namespace": "default"}})
    assert refused.value.status == 429 and json.loads(refused.value.body)["reason"] == "TooManyRequests"
    assert api.store.find(PODS, "default", "b") is not None


def test_logs_come_from_the_runtime(api, client, tmp_path):
    """pods/log picks the instance the pod's status names (the kubelet's rules: --previous, a container waiting to
    start) and reads its CRI log with the options; the kubelet's words for a missing log come back as 400s."""
    class Runtime(SimulatedRuntime):
        def log_path(self, pod_uid, container, instance=None):
            return str(tmp_path / f"{container}-{instance}.log")

    stamps = [f"2026-01-01T00:00:0{i}.000000000Z" for i in range(5)]
    (tmp_path / "app-0.log").write_text("".join(f"{stamps[i]} stdout F app line {i}\n" for i in range(4))
                                        + f"{stamps[4]} stderr P no newline\n")
    (tmp_path / "app-1.log").write_text(f"{stamps[4]} stdout F restarted\n")
    api.server.runtime = Runtime()
    core = k8s.CoreV1Api(client)
    core.create_namespaced_pod("default", manifest("pods", "p"))
    unscheduled = core.read_namespaced_pod_log("p", "default", _preload_content=False)
    assert unscheduled.status == 200 and unscheduled.data == b""   # no node yet: an empty log, as upstream
    core.create_namespaced_pod_binding("p", "default", {"metadata": {"name": "p"},
                                                        "target": {"kind": "Node", "name": "node1"}},
                                     _preload_content=False)   # the answer is a Status the client cannot model

    def container_status(**status):
        core.patch_namespaced_pod_status("p", "default", {"status": {"containerStatuses": [
            {"name": "app", "image": "nginx:1.27", "imageID": "", "ready": True, "restartCount": 0, **status}]}})

    def refused(**options) -> tuple[int, str]:
        with pytest.raises(ApiException) as error:
            core.read_namespaced_pod_log("p", "default", **options)
        return error.value.status, json.loads(error.value.body)["message"]

    container_status(state={"waiting": {"reason": "ContainerCreating"}})
    assert refused() == (400, 'container "app" in pod "p" is waiting to start: ContainerCreating')
    running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    container_status(state=running, containerID="kubesim://abc-app-0")
    assert refused(previous=True) == (400, 'previous terminated container "app" in pod "p" not found')
    response = core.read_namespaced_pod_log("p", "default", tail_lines=2, _preload_content=False)
    assert response.data == b"app line 3\nno newline" and response.headers["Content-Type"] == "text/plain"
    first = f"{stamps[0]} app line 0\n"
    stamped = core.read_namespaced_pod_log("p", "default", timestamps=True, limit_bytes=len(first) + 33,
                                           _preload_content=False)
    assert stamped.data.decode() == f"{first}{stamps[1]} ap"   # limitBytes counts the timestamps
    assert api.kubectl("logs", "p", "--since-time=2026-01-01T00:00:03Z").stdout == "app line 3\nno newline"
    assert refused(tail_lines=-1) == (422, 'PodLogOptions "p" is invalid: tailLines: Invalid value: -1: must be '
                                           'greater than or equal to 0')
    container_status(state=running, containerID="kubesim://abc-app-1", restartCount=1, lastState={"terminated": {
        "exitCode": 1, "reason": "Error", "containerID": "kubesim://abc-app-0"}})
    assert api.kubectl("logs", "p").stdout == "restarted\n"
    assert api.kubectl("logs", "p", "--previous", "--tail=1").stdout == "no newline"


def test_server_side_apply_with_the_client(api, client):
    apps = k8s.AppsV1Api(client)
    config = manifest("apps/deployments", "web")
    created = apps.patch_namespaced_deployment("web", "default", config, field_manager="deployer",
                                               _content_type="application/apply-patch+yaml")
    assert created.metadata.managed_fields[0].manager == "deployer"
    assert created.metadata.managed_fields[0].operation == "Apply"
    apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}}, field_manager="scaler")
    with pytest.raises(ApiException) as conflict:
        apps.patch_namespaced_deployment("web", "default", config, field_manager="deployer",
                                         _content_type="application/apply-patch+yaml")
    status = json.loads(conflict.value.body)
    assert conflict.value.status == 409 and status["reason"] == "Conflict"
    assert status["details"]["causes"] == [{"reason": "FieldManagerConflict", "field": ".spec.replicas",
                                            "message": 'conflict with "scaler" using apps/v1'}]
    forced = apps.patch_namespaced_deployment("web", "default", config, field_manager="deployer", force=True,
                                              _content_type="application/apply-patch+yaml")
    assert forced.spec.replicas == 1
    trimmed = json.loads(json.dumps(config))
    trimmed["spec"]["template"]["metadata"]["labels"]["extra"] = "x"
    del trimmed["spec"]["replicas"]
    applied = apps.patch_namespaced_deployment("web", "default", trimmed, field_manager="deployer",
                                               _content_type="application/apply-patch+yaml")
    assert applied.spec.template.metadata.labels == {"app": "demo", "extra": "x"}
    with pytest.raises(ApiException) as no_manager:
        apps.patch_namespaced_deployment("web", "default", config, _content_type="application/apply-patch+yaml")
    assert no_manager.value.status == 400 and "fieldManager is required" in no_manager.value.body


def test_server_side_apply_removes_list_items_the_manager_no_longer_applies(api, client):
    """An apply without an item (or the whole keyed list) it applied before removes it, as the real API server does;
    its key fields must not be stripped first, leaving an unnamed item behind."""
    apps = k8s.AppsV1Api(client)
    config = manifest("apps/deployments", "web")
    pod_spec = config["spec"]["template"]["spec"]
    pod_spec["initContainers"] = [{"name": "seed", "image": "busybox:1.36"}]
    pod_spec["containers"][0]["env"] = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    apps.patch_namespaced_deployment("web", "default", config, field_manager="deployer",
                                     _content_type="application/apply-patch+yaml")
    del pod_spec["initContainers"]
    pod_spec["containers"][0]["env"] = [{"name": "B", "value": "2"}]
    applied = apps.patch_namespaced_deployment("web", "default", config, field_manager="deployer",
                                               _content_type="application/apply-patch+yaml")
    assert applied.spec.template.spec.init_containers is None
    assert [(e.name, e.value) for e in applied.spec.template.spec.containers[0].env] == [("B", "2")]


def test_strategic_merge_directives(api, client):
    apps = k8s.AppsV1Api(client)
    deployment = manifest("apps/deployments", "web")
    pod_spec = deployment["spec"]["template"]["spec"]
    pod_spec["containers"][0]["env"] = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    pod_spec["tolerations"] = [{"key": "old", "operator": "Exists"}]
    deployment["metadata"]["finalizers"] = ["example.com/a"]
    apps.create_namespaced_deployment("default", deployment)
    patched = apps.patch_namespaced_deployment("web", "default", {
        "metadata": {"finalizers": ["example.com/b"], "labels": {"x": "y"}},
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}],
            "containers": [{"name": "app", "env": [{"name": "A", "$patch": "delete"}, {"name": "C", "value": "3"}]}],
            "tolerations": [{"key": "new", "operator": "Exists"}]}}}})
    # upstream order (apimachinery normalizeElementOrder): items named in the patch come before server-only ones
    assert patched.metadata.finalizers == ["example.com/b", "example.com/a"]
    pod_spec = patched.spec.template.spec
    assert [(e.name, e.value) for e in pod_spec.containers[0].env] == [("C", "3"), ("B", "2")]
    assert [t.key for t in pod_spec.tolerations] == ["new"]  # no merge key: the list is replaced
    replaced = apps.patch_namespaced_deployment("web", "default",
                                                {"metadata": {"labels": {"$patch": "replace", "z": "1"}}})
    assert replaced.metadata.labels == {"z": "1"}


def test_tables(api, client):
    core = k8s.CoreV1Api(client)
    core.create_namespaced_pod("default", manifest("pods", "p"))
    status, table = request(api, "GET", "/api/v1/namespaces/default/pods", accept=TABLE)
    assert status == 200 and table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [(c["name"], c["priority"]) for c in table["columnDefinitions"]] == [
        ("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1), ("Node", 1),
        ("Nominated Node", 1), ("Readiness Gates", 1)]
    assert table["rows"][0]["cells"][:4] == ["p", "0/1", "Pending", "0"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    _, full = request(api, "GET", "/api/v1/namespaces/default/pods/p?includeObject=Object", accept=TABLE)
    assert full["rows"][0]["object"]["kind"] == "Pod"
    _, bare = request(api, "GET", "/api/v1/namespaces/default/pods?includeObject=None", accept=TABLE)
    assert "object" not in bare["rows"][0]
    request(api, "POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            json.dumps(manifest("discovery.k8s.io/endpointslices", "s")))
    _, generic = request(api, "GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", accept=TABLE)
    assert [c["name"] for c in generic["columnDefinitions"]] == ["Name", "Age"]
    assert generic["rows"][0]["cells"][0] == "s"


def test_patch_directives_retain_keys_and_primitive_deletes(api, client):
    apps = k8s.AppsV1Api(client)
    deployment = manifest("apps/deployments", "web")
    deployment["metadata"]["finalizers"] = ["example.com/a", "example.com/b"]
    apps.create_namespaced_deployment("default", deployment)
    patched = apps.patch_namespaced_deployment("web", "default", {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"]},
        "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}})
    assert patched.metadata.finalizers == ["example.com/b"]
    assert patched.spec.strategy.type == "Recreate" and patched.spec.strategy.rolling_update is None


def test_delete_preconditions_and_propagation(api, client):
    core = k8s.CoreV1Api(client)
    created = core.create_namespaced_config_map("default", manifest("configmaps", "cm"))
    with pytest.raises(ApiException) as stale:
        core.delete_namespaced_config_map("cm", "default", body=k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(uid="not-the-uid")))
    assert stale.value.status == 409 and "Precondition failed" in stale.value.body
    status, kept = request(api, "DELETE", "/api/v1/namespaces/default/configmaps/cm?propagationPolicy=Foreground")
    assert status == 200 and kept["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert kept["metadata"]["deletionTimestamp"] and kept["metadata"]["uid"] == created.metadata.uid


def test_watch_send_initial_events_ends_with_a_bookmark(api, client):
    core = k8s.CoreV1Api(client)
    core.create_namespaced_config_map("default", manifest("configmaps", "cm"))
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(api.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true"
                        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=2")
    response = conn.getresponse()
    first, second = json.loads(response.readline()), json.loads(response.readline())
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "cm")
    assert second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    conn.close()


def test_server_side_apply_resource_version_is_a_precondition(api, client):
    core = k8s.CoreV1Api(client)
    created = core.create_namespaced_config_map("default", manifest("configmaps", "cm"))
    stale = dict(manifest("configmaps", "cm"), data={"k": "new"})
    stale["metadata"]["resourceVersion"] = "1"
    with pytest.raises(ApiException) as conflict:
        core.patch_namespaced_config_map("cm", "default", stale, field_manager="me", force=True,
                                         _content_type="application/apply-patch+yaml")
    assert conflict.value.status == 409 and "the object has been modified" in conflict.value.body
    stale["metadata"]["resourceVersion"] = created.metadata.resource_version
    applied = core.patch_namespaced_config_map("cm", "default", stale, field_manager="me", force=True,
                                               _content_type="application/apply-patch+yaml")
    assert applied.data == {"k": "new"}
    status, dry = request(api, "PATCH", "/api/v1/namespaces/default/configmaps/cm?fieldManager=me&dryRun=All",
                          json.dumps(dict(manifest("configmaps", "cm"), data={"k": "dry"})),
                          "application/apply-patch+yaml")
    assert status == 200 and dry["data"] == {"k": "dry"}
    assert api.store.get(CONFIGMAPS, "default", "cm")["data"] == {"k": "new"}


def test_status_writes_are_type_checked_and_conflict_when_stale(api, client):
    core = k8s.CoreV1Api(client)
    pod = core.create_namespaced_pod("default", manifest("pods", "p"))
    status, bad = request(api, "PATCH", "/api/v1/namespaces/default/pods/p/status",
                          json.dumps({"status": {"containerStatuses": "running"}}), "application/merge-patch+json")
    assert status == 400 and "cannot unmarshal string" in bad["message"]
    core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"}})
    pod.status.phase = "Failed"
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_pod_status("p", "default", pod)
    assert stale.value.status == 409
    assert api.kubectl("get", "pod", "p").stdout.split()[7] == "Running"


def test_server_side_apply_on_status(api, client):
    core = k8s.CoreV1Api(client)
    core.create_namespaced_pod("default", manifest("pods", "p"))
    config = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
              "status": {"phase": "Running", "podIP": "127.1.0.7"}}
    applied = core.patch_namespaced_pod_status("p", "default", config, field_manager="node-agent",
                                               _content_type="application/apply-patch+yaml")
    assert applied.status.phase == "Running" and applied.status.pod_ip == "127.1.0.7"
    entry = next(e for e in applied.metadata.managed_fields if e.manager == "node-agent")
    assert (entry.operation, entry.subresource) == ("Apply", "status")
    assert entry.fields_v1 == {"f:status": {"f:phase": {}, "f:podIP": {}}}
    del config["status"]["podIP"]  # no longer applied: removed, as nobody else owns it
    again = core.patch_namespaced_pod_status("p", "default", config, field_manager="node-agent",
                                             _content_type="application/apply-patch+yaml")
    assert again.status.pod_ip is None and again.status.phase == "Running"
    assert again.spec.containers[0].image == "nginx:1.27"
