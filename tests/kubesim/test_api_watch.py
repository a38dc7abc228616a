"""Watch over HTTP with the real kubernetes client: resume, selectors on the stream, 410 Gone, bookmarks."""
from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import pytest
from kubernetes import client as k8s, watch
from kubernetes.client.rest import ApiException

from kubesim.apiserver.server import ApiServer
from kubesim.config import ClusterConfig
from kubesim.resources import CONFIGMAPS, NAMESPACES
from kubesim.store import Store

from manifests import manifest

from api_harness import api, client  # noqa: F401  (fixtures)


def events(core, **kwargs) -> list[tuple[str, str, dict]]:
    stream = watch.Watch().stream(core.list_namespaced_config_map, "default", timeout_seconds=1, **kwargs)
    return [(e["type"], e["object"].metadata.name, e["object"].metadata.labels or {}) for e in stream]


def test_watch_resumes_from_resource_version(api, client):
    core = k8s.CoreV1Api(client)
    core.create_namespaced_config_map("default", manifest("configmaps", "before"))
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", manifest("configmaps", "cm", labels={"app": "a"}))
    core.patch_namespaced_config_map("cm", "default", {"metadata": {"labels": {"app": "b"}}})
    core.delete_namespaced_config_map("cm", "default")
    assert [(t, n) for t, n, _ in events(core, resource_version=rv)] == \
        [("ADDED", "cm"), ("MODIFIED", "cm"), ("DELETED", "cm")]
    assert [(t, n) for t, n, _ in events(core)] == [("ADDED", "before")]  # no RV: the current state


def test_objects_leaving_the_selection_arrive_as_deleted(api, client):
    core = k8s.CoreV1Api(client)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", manifest("configmaps", "cm", labels={"app": "a"}))
    core.patch_namespaced_config_map("cm", "default", {"metadata": {"labels": {"app": "b"}}})
    core.patch_namespaced_config_map("cm", "default", {"metadata": {"labels": {"app": "a"}}})
    core.create_namespaced_config_map("default", manifest("configmaps", "other", labels={"app": "b"}))
    assert [(t, n) for t, n, _ in events(core, resource_version=rv, label_selector="app=a")] == \
        [("ADDED", "cm"), ("DELETED", "cm"), ("ADDED", "cm")]
    assert [(t, n) for t, n, _ in events(core, resource_version=rv, field_selector="metadata.name=other")] == \
        [("ADDED", "other")]


def test_too_old_resource_version_is_410_gone():
    store = Store(history_size=3)
    store.create(NAMESPACES, {"metadata": {"name": "default"}})
    for i in range(6):
        store.create(CONFIGMAPS, manifest("configmaps", f"cm{i}"))
    server = ApiServer(store, ClusterConfig())
    url = server.start()
    try:
        configuration = k8s.Configuration(host=url)
        with k8s.ApiClient(configuration) as api_client:
            core = k8s.CoreV1Api(api_client)
            with pytest.raises(ApiException) as gone:
                list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version="1",
                                          timeout_seconds=1))
            assert gone.value.status == 410
            current = list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                                resource_version=str(store.resource_version - 1),
                                                timeout_seconds=1))
            assert [e["object"].metadata.name for e in current] == ["cm5"]
    finally:
        server.stop()
        store.close()


def _raw_watch(url: str, path: str):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_bookmarks_and_event_latency(api, client):
    api.server.bookmark_seconds = 0.3
    core = k8s.CoreV1Api(client)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    conn, response = _raw_watch(api.url, f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
                                         f"&allowWatchBookmarks=true&timeoutSeconds=5")
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    bookmark = json.loads(response.readline())
    assert bookmark["type"] == "BOOKMARK" and int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(rv)
    created_at = []

    def create():
        created_at.append(time.monotonic())
        core.create_namespaced_config_map("default", manifest("configmaps", "fast"))
    threading.Timer(0.05, create).start()
    while True:
        event = json.loads(response.readline())
        if event["type"] != "BOOKMARK":
            break
    latency = time.monotonic() - created_at[0]
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "fast"
    assert latency < 0.5, latency
    conn.close()


def test_watch_timeout_ends_the_stream(api):
    started = time.monotonic()
    conn, response = _raw_watch(api.url, "/api/v1/watch/namespaces/default/configmaps?timeoutSeconds=1")
    assert response.read() == b""
    assert 0.9 <= time.monotonic() - started < 3
    conn.close()
    entry = [r for r in api.server.request_log if r["verb"] == "watch"][-1]
    assert entry["resource"] == "configmaps" and entry["namespace"] == "default" and entry["status"] == 200
