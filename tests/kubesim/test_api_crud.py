"""CRUD for every resource type through the real kubernetes client's generic REST calls, over HTTP."""
from __future__ import annotations

import json

import pytest
from kubernetes.client.rest import ApiException

from kubesim.resources import RESOURCE_TYPES, BY_KEY

from manifests import MANIFESTS, manifest

from api_harness import api, client  # noqa: F401  (fixtures)


def path(rt, namespace=None, name=None, sub=None) -> str:
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    out = prefix + (f"/namespaces/{namespace}" if rt.namespaced else "") + f"/{rt.plural}"
    return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def call(client, method: str, url: str, body=None, query=None, content_type="application/json"):
    """One request through the client's own REST machinery; returns (status, parsed body)."""
    response = client.call_api(url, method, query_params=list((query or {}).items()),
                                header_params={"Accept": "application/json", "Content-Type": content_type},
                                body=body, _preload_content=False)
    return response.status, json.loads(response.data) if response.data else None


def test_every_resource_type_is_covered():
    assert set(MANIFESTS) == {rt.key for rt in RESOURCE_TYPES}


@pytest.mark.parametrize("key", sorted(MANIFESTS))
def test_crud_roundtrip(api, client, key):
    rt = BY_KEY[key]
    ns = "default" if rt.namespaced else None
    status, created = call(client, "POST", path(rt, ns), manifest(key, "demo-1", labels={"tier": "a"}))
    assert status == 201, created
    assert created["kind"] == rt.kind and created["apiVersion"] == rt.api_version
    assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    assert api.store.find(rt, ns, "demo-1") is not None

    status, fetched = call(client, "GET", path(rt, ns, "demo-1"))
    assert status == 200 and fetched["metadata"]["uid"] == created["metadata"]["uid"]

    call(client, "POST", path(rt, ns), manifest(key, "demo-2", labels={"tier": "b"}))
    status, listed = call(client, "GET", path(rt, ns), query={"labelSelector": "tier in (a,b),tier!=b"})
    assert status == 200 and listed["kind"] == f"{rt.kind}List"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["demo-1"]

    fetched["metadata"]["labels"]["tier"] = "c"
    status, updated = call(client, "PUT", path(rt, ns, "demo-1"), fetched)
    assert status == 200 and updated["metadata"]["labels"]["tier"] == "c"
    assert int(updated["metadata"]["resourceVersion"]) > int(fetched["metadata"]["resourceVersion"])

    with pytest.raises(ApiException) as stale:  # the resourceVersion we read before is now stale
        call(client, "PUT", path(rt, ns, "demo-1"), fetched)
    assert stale.value.status == 409 and json.loads(stale.value.body)["reason"] == "Conflict"

    status, _ = call(client, "DELETE", path(rt, ns, "demo-2"))
    assert status == 200
    if key != "namespaces":  # namespaces wait for their finalizer (the namespace controller)
        assert api.store.find(rt, ns, "demo-2") is None
        with pytest.raises(ApiException) as missing:
            call(client, "GET", path(rt, ns, "demo-2"))
        assert missing.value.status == 404 and json.loads(missing.value.body)["reason"] == "NotFound"


@pytest.mark.parametrize("key", ["pods", "apps/deployments", "configmaps"])
def test_dry_run_writes_nothing(api, client, key):
    rt = BY_KEY[key]
    status, obj = call(client, "POST", path(rt, "default"), manifest(key, "dry"), {"dryRun": "All"})
    assert status == 201 and obj["metadata"]["name"] == "dry"
    assert api.store.find(rt, "default", "dry") is None
    call(client, "POST", path(rt, "default"), manifest(key, "real"))
    rv = api.store.resource_version
    status, obj = call(client, "PATCH", path(rt, "default", "real"), {"metadata": {"labels": {"x": "y"}}},
                       {"dryRun": "All"}, "application/merge-patch+json")
    assert status == 200 and obj["metadata"]["labels"] == {"x": "y"}
    status, _ = call(client, "DELETE", path(rt, "default", "real"), query={"dryRun": "All"})
    assert status == 200
    assert api.store.resource_version == rv
    assert "labels" not in api.store.get(rt, "default", "real")["metadata"]
    dry = [r for r in api.server.request_log if r["query"].get("dryRun") == "All"]
    assert [r["verb"] for r in dry] == ["create", "patch", "delete"]


def test_typed_client_crud_and_stale_update(api, client):
    from kubernetes import client as k8s
    apps = k8s.AppsV1Api(client)
    body = manifest("apps/deployments", "web")
    created = apps.create_namespaced_deployment("default", body)
    assert created.spec.strategy.type == "RollingUpdate"
    assert created.spec.strategy.rolling_update.max_surge == "25%"
    assert created.spec.revision_history_limit == 10 and created.spec.progress_deadline_seconds == 600
    assert created.spec.template.spec.containers[0].termination_message_path == "/dev/termination-log"
    created.spec.replicas = 3
    updated = apps.replace_namespaced_deployment("web", "default", created)
    assert updated.spec.replicas == 3 and updated.metadata.generation == 2
    created.spec.replicas = 4
    with pytest.raises(ApiException) as conflict:
        apps.replace_namespaced_deployment("web", "default", created)
    assert conflict.value.status == 409
    assert "the object has been modified" in json.loads(conflict.value.body)["message"]
    names = [d.metadata.name for d in apps.list_deployment_for_all_namespaces().items]
    assert names == ["web"]
    status = apps.delete_namespaced_deployment("web", "default")
    assert status.status == "Success"


def test_invalid_objects_are_422_with_field_causes(api, client):
    from kubernetes import client as k8s
    core, apps = k8s.CoreV1Api(client), k8s.AppsV1Api(client)
    cases = [
        (lambda: core.create_namespaced_config_map("default", {"metadata": {"name": "Bad_Name"}}),
         "metadata.name"),
        (lambda: core.create_namespaced_pod("default", {"metadata": {"name": "p"},
                                                         "spec": {"containers": [{"name": "c"}]}}),
         "spec.containers[0].image"),
        (lambda: core.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": {"containers": []}}),
         "spec.containers"),
        (lambda: apps.create_namespaced_deployment("default", {"metadata": {"name": "d"},
                                                                "spec": {"template": MANIFESTS["pods"]}}),
         "spec.selector"),
        (lambda: core.create_namespaced_service("default", {"metadata": {"name": "svc.dotted"},
                                                             "spec": {"ports": [{"port": 80}]}}),
         "metadata.name"),
        (lambda: core.create_namespaced_config_map("default", {"metadata": {"name": "l",
                                                                            "labels": {"a": "b c"}}}),
         "metadata.labels"),
        (lambda: apps.create_namespaced_deployment("default", {"metadata": {"name": "d"}, "spec": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]},
            "template": MANIFESTS["pods"]}}),
         "spec.selector"),   # LabelSelectors know In, NotIn, Exists and DoesNotExist only
        (lambda: apps.create_namespaced_deployment("default", {"metadata": {"name": "d"}, "spec": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
            "template": dict(MANIFESTS["pods"], metadata={"labels": {"app": "web"}})}}),
         "spec.template.metadata.labels"),   # the selector must select its own template
    ]
    for create, field in cases:
        with pytest.raises(ApiException) as invalid:
            create()
        status = json.loads(invalid.value.body)
        assert invalid.value.status == 422 and status["reason"] == "Invalid", status
        assert field in [c["field"] for c in status["details"]["causes"]], status


def test_immutable_fields_are_422(api, client):
    from kubernetes import client as k8s
    apps, core = k8s.AppsV1Api(client), k8s.CoreV1Api(client)
    apps.create_namespaced_deployment("default", manifest("apps/deployments", "web"))
    with pytest.raises(ApiException) as invalid:
        apps.patch_namespaced_deployment("web", "default", {"spec": {"selector": {"matchLabels": {"app": "x"}},
                                                                     "template": {"metadata": {
                                                                         "labels": {"app": "x"}}}}})
    causes = json.loads(invalid.value.body)["details"]["causes"]
    assert invalid.value.status == 422 and causes[0]["field"] == "spec.selector"
    assert "field is immutable" in causes[0]["message"]
    core.create_namespaced_pod("default", manifest("pods", "p"))
    with pytest.raises(ApiException) as forbidden:
        core.patch_namespaced_pod("p", "default", {"spec": {"restartPolicy": "Never"}})
    assert forbidden.value.status == 422 and "pod updates may not change fields" in forbidden.value.body
    patched = core.patch_namespaced_pod("p", "default", {"spec": {"containers": [{"name": "app",
                                                                                  "image": "nginx:1.28"}]}})
    assert patched.spec.containers[0].image == "nginx:1.28"


def test_services_get_cluster_ips_and_node_ports(api, client):
    from kubernetes import client as k8s
    core = k8s.CoreV1Api(client)
    a = core.create_namespaced_service("default", manifest("services", "a"))
    body = manifest("services", "b")
    body["spec"]["type"] = "NodePort"
    b = core.create_namespaced_service("default", body)
    headless = manifest("services", "c")
    headless["spec"]["clusterIP"] = "None"
    c = core.create_namespaced_service("default", headless)
    assert a.spec.cluster_ip.startswith("127.96.") and a.spec.cluster_ips == [a.spec.cluster_ip]
    assert b.spec.cluster_ip.startswith("127.96.") and b.spec.cluster_ip != a.spec.cluster_ip
    assert a.spec.ip_families == ["IPv4"] and a.spec.session_affinity == "None" and a.spec.type == "ClusterIP"
    assert 30000 <= b.spec.ports[0].node_port <= 32767
    assert c.spec.cluster_ip == "None"
    a.spec.cluster_ip = "127.96.200.200"
    a.spec.cluster_ips = ["127.96.200.200"]
    with pytest.raises(ApiException) as immutable:
        core.replace_namespaced_service("a", "default", a)
    assert immutable.value.status == 422 and "spec.clusterIP" in immutable.value.body


def test_list_pagination_and_field_selectors(api, client):
    from kubernetes import client as k8s
    core = k8s.CoreV1Api(client)
    for i in range(5):
        pod = manifest("pods", f"p{i}")
        pod["spec"]["nodeName"] = "node1" if i % 2 else "node2"
        core.create_namespaced_pod("default", pod)
    page = core.list_namespaced_pod("default", limit=2)
    names = [p.metadata.name for p in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_pod("default", limit=2, _continue=page.metadata._continue)
        names += [p.metadata.name for p in page.items]
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    on_node1 = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node1,status.phase=Pending")
    assert [p.metadata.name for p in on_node1.items] == ["p1", "p3"]
    assert [p.metadata.name for p in core.list_namespaced_pod("default", field_selector="metadata.name!=p0",
                                                              label_selector="!missing").items][:1] == ["p1"]
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_pod("default", field_selector="spec.bogus=1")
    assert bad.value.status == 400 and "field label not supported: spec.bogus" in bad.value.body
    for label_selector, field_selector, message in (
            ("!app=x", None, "unable to parse requirement: found '!app=x', expected: in, notin, =, ==, !=, gt, lt"),
            ("app in x", None, "unable to parse requirement: found 'app in x'"),
            (None, "spec.nodeName", "invalid selector: 'spec.nodeName'; can't understand 'spec.nodeName'")):
        with pytest.raises(ApiException) as bad:
            core.list_namespaced_pod("default", label_selector=label_selector, field_selector=field_selector)
        assert bad.value.status == 400 and message in json.loads(bad.value.body)["message"]
    core.delete_collection_namespaced_pod("default", field_selector="spec.nodeName=node2", grace_period_seconds=0)
    assert sorted(p.metadata.name for p in core.list_namespaced_pod("default").items) == ["p1", "p3"]


def test_dynamic_client_uses_legacy_discovery(api, client):
    from kubernetes.dynamic import DynamicClient
    dynamic = DynamicClient(client)
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    deployments.create(body=manifest("apps/deployments", "web"), namespace="default")
    assert [d.metadata.name for d in deployments.get(namespace="default").items] == ["web"]
    assert "/apis/apps/v1" in [r["path"] for r in api.server.request_log]


def test_get_and_list_honour_resource_version(api, client, monkeypatch):
    """NotOlderThan (the default) is served from the newest state; a version not reached yet is waited for,
    then 504 Timeout like the watch cache; Exact only for the newest version; bad combinations are refused."""
    import threading

    from kubernetes import client as k8s
    from kubesim.apiserver import handlers
    core = k8s.CoreV1Api(client)
    created = core.create_namespaced_config_map("default", manifest("configmaps", "c"))
    listed = core.list_namespaced_config_map("default", resource_version=created.metadata.resource_version)
    assert [c.metadata.name for c in listed.items] == ["c"]
    current = int(listed.metadata.resource_version)
    one = "/api/v1/namespaces/default/configmaps/c"   # the client's read_* has no resourceVersion
    assert call(client, "GET", one, query={"resourceVersion": "0"})[1]["metadata"]["name"] == "c"
    exact = core.list_namespaced_config_map("default", resource_version=str(current),
                                            resource_version_match="Exact")
    assert exact.metadata.resource_version == str(current)

    # a version one write ahead: answered once that write lands within the wait
    writer = threading.Timer(0.3, lambda: core.create_namespaced_config_map("default", manifest("configmaps", "d")))
    writer.start()
    ahead = core.list_namespaced_config_map("default", resource_version=str(current + 1))
    writer.join()
    assert sorted(c.metadata.name for c in ahead.items) == ["c", "d"]

    monkeypatch.setattr(handlers, "RESOURCE_VERSION_WAIT_SECONDS", 0.2)
    refusals = [
        ({"resource_version": str(current + 100)}, 504, "Timeout", f"Too large resource version: {current + 100}"),
        ({"resource_version": str(current), "resource_version_match": "Exact"}, 410, "Expired",
         "The resourceVersion for the provided list is too old."),
        ({"resource_version_match": "NotOlderThan"}, 422, "Invalid",
         "resourceVersionMatch is forbidden unless resourceVersion is provided"),
        ({"resource_version": "0", "resource_version_match": "Exact"}, 422, "Invalid",
         'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'),
        ({"resource_version": "abc"}, 400, "BadRequest", 'invalid resource version "abc"'),
    ]
    for options, code, reason, message in refusals:
        with pytest.raises(ApiException) as refused:
            core.list_namespaced_config_map("default", **options)
        status = json.loads(refused.value.body)
        assert (refused.value.status, status["reason"]) == (code, reason) and message in status["message"], status
    with pytest.raises(ApiException) as too_large:
        call(client, "GET", one, query={"resourceVersion": str(current + 100)})
    assert too_large.value.status == 504
    assert json.loads(too_large.value.body)["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
