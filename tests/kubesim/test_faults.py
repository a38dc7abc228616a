"""Fault injection: every fault observable where it strikes, and clearable (Python API, admin endpoint, CLI)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from dataplane_support import container, create_pod, make_dataplane, wait_for, wait_ready

from kubesim import faults_cli
from kubesim.faults import ADMIN_PATH, FaultRegistry


@pytest.fixture
def plane(tmp_path):
    store, dataplane, faults = make_dataplane(tmp_path)
    yield store, dataplane, faults
    dataplane.stop()


def test_api_errors_by_verb_and_resource():
    faults = FaultRegistry(seed=7)
    fault = faults.add("api-error", verb="list", resource="pods", code="500")
    error = faults.api_fault("list", "pods")
    assert (error.code, error.reason) == (500, "InternalError")
    assert faults.api_fault("get", "pods") is None and faults.api_fault("list", "apps/deployments") is None

    faults.add("api-error", resource="apps/*", code="429", retry_after=3)
    throttled = faults.api_fault("patch", "apps/deployments")
    assert (throttled.code, throttled.headers, throttled.status()["details"]["retryAfterSeconds"]) == \
        (429, {"Retry-After": "3"}, 3)

    faults.clear()
    faults.add("api-error", verb="create", code="timeout", seconds=0.2)
    started = time.monotonic()
    timeout = faults.api_fault("create", "pods")
    assert timeout.code == 504 and time.monotonic() - started >= 0.2
    assert [f["hits"] for f in faults.list()] == [1]
    assert [f.id for f in faults.clear(kind="api-error")] != [] and faults.api_fault("create", "pods") is None
    assert faults.list() == [] and fault.hits == 1


def test_api_error_fraction_and_count():
    faults = FaultRegistry(seed=3)
    faults.add("api-error", fraction=0.3)
    failed = sum(faults.api_fault("get", "pods") is not None for _ in range(2000))
    assert 450 < failed < 750
    faults.clear()
    faults.add("api-error", code="500", count=2)
    assert [faults.api_fault("get", "pods") is not None for _ in range(4)] == [True, True, False, False]
    assert faults.list() == []


def test_api_latency_node_and_startup_faults():
    faults = FaultRegistry()
    faults.add("api-latency", verb="watch", seconds=0.5)
    faults.add("api-latency", seconds=0.25)
    assert faults.api_latency("watch", "pods") == 0.75 and faults.api_latency("get", "pods") == 0.25
    node_fault = faults.add("node-not-ready", node="node2")
    faults.add("slow-startup", node="node*", seconds=2)
    assert faults.node_not_ready("node2") and not faults.node_not_ready("node1")
    assert faults.extra_startup_seconds("node1") == 2
    faults.clear(node_fault.id)
    assert not faults.node_not_ready("node2")
    faults.clear()
    assert faults.api_latency("watch", "pods") == 0 and faults.extra_startup_seconds("node1") == 0


def test_bad_faults_are_rejected():
    faults = FaultRegistry()
    for kind, params in (("melt-down", {}), ("api-error", {"code": "418"}), ("api-error", {"fraction": 2}),
                         ("slow-startup", {"node": "node1"}), ("image-crash", {"image": "x", "color": "red"})):
        with pytest.raises(ValueError):
            faults.add(kind, **params)
    assert faults.list() == []


def test_image_pull_fault(plane):
    store, dataplane, faults = plane
    pod = create_pod(store, "pull", [{"name": "db", "image": "postgres:16"}])
    faults.add("image-pull-error", image="postgres:*")
    assert dataplane.runtime.pull(pod, "node1") == (
        'Failed to pull image "postgres:16": rpc error: code = NotFound desc = failed to pull and unpack image '
        '"postgres:16": failed to resolve reference "postgres:16": postgres:16: not found')
    faults.clear(kind="image-pull-error")
    assert dataplane.runtime.pull(pod, "node1") is None


def test_image_crash_fault_until_cleared(plane):
    store, dataplane, faults = plane
    faults.add("image-crash", image="*/web:*")
    pod = create_pod(store, "crashy", [{"name": "web", "image": "shop/web:2", "ports": [{"containerPort": 8080}]}])
    dataplane.runtime.start_pod(pod, "node1", "127.0.90.1")
    looping = wait_for(lambda: (c := container(dataplane, pod, "web")) and c.reason == "CrashLoopBackOff" and c,
                       what="CrashLoopBackOff")
    assert looping.exit_code == 1
    assert "crashes on start" in dataplane.runtime.logs(pod["metadata"]["uid"], "web")
    faults.clear()
    assert wait_ready(dataplane, pod, "web").running


def test_image_never_ready_fault_until_cleared(plane):
    store, dataplane, faults = plane
    fault = faults.add("image-never-ready", image="shop/web:*")
    pod = create_pod(store, "lazy", [{"name": "web", "image": "shop/web:3", "ports": [{"containerPort": 8080}],
                                      "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 0.1}}])
    dataplane.runtime.start_pod(pod, "node1", "127.0.90.2")
    time.sleep(1.0)
    status = container(dataplane, pod, "web")
    assert status.running and not status.ready
    faults.clear(fault.id)
    wait_ready(dataplane, pod, "web")


def test_image_faults_scoped_to_a_node(plane):
    store, dataplane, faults = plane
    faults.add("image-never-ready", image="shop/web:*", node="node2")
    faults.add("image-pull-error", image="postgres:*", node="node2")
    spec = {"name": "web", "image": "shop/web:4", "ports": [{"containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 0.1}}
    on_source, on_target = create_pod(store, "source", [spec]), create_pod(store, "target", [spec])
    dataplane.runtime.start_pod(on_source, "node1", "127.0.90.3")
    dataplane.runtime.start_pod(on_target, "node2", "127.0.90.4")
    wait_ready(dataplane, on_source, "web")
    time.sleep(1.0)
    status = container(dataplane, on_target, "web")
    assert status.running and not status.ready
    db = create_pod(store, "db", [{"name": "db", "image": "postgres:16"}])
    assert dataplane.runtime.pull(db, "node1") is None and "postgres:16" in dataplane.runtime.pull(db, "node2")


def test_admin_endpoint():
    faults = FaultRegistry()
    status, created = faults.handle_admin("POST", ADMIN_PATH, b'{"kind": "node-not-ready", "node": "node1"}')
    assert status == 201 and created["kind"] == "node-not-ready" and faults.node_not_ready("node1")
    status, listed = faults.handle_admin("GET", ADMIN_PATH + "?pretty=true", None)
    assert status == 200 and [f["id"] for f in listed["faults"]] == [created["id"]] and "api-error" in listed["kinds"]
    assert faults.handle_admin("POST", ADMIN_PATH, '{"kind": "api-error", "code": "404"}')[0] == 400
    assert faults.handle_admin("POST", ADMIN_PATH, b"not json")[0] == 400
    assert faults.handle_admin("DELETE", ADMIN_PATH + "/f999", None)[0] == 404
    assert faults.handle_admin("PUT", ADMIN_PATH, None)[0] == 405
    assert faults.handle_admin("GET", "/kubesim/other", None)[0] == 404
    status, cleared = faults.handle_admin("DELETE", f"{ADMIN_PATH}/{created['id']}", None)
    assert status == 200 and [f["id"] for f in cleared["cleared"]] == [created["id"]]
    assert not faults.node_not_ready("node1")


def test_cli_talks_to_the_admin_endpoint(tmp_path, capsys):
    faults = FaultRegistry()

    class AdminHandler(BaseHTTPRequestHandler):  # stands in for the API server's route to handle_admin
        def _serve(self) -> None:
            assert self.headers["Authorization"] == "Bearer kubesim-admin"
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer = faults.handle_admin(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), AdminHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kubesim",
        "clusters": [{"name": "kubesim", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "admin", "user": {"token": "kubesim-admin"}}],
        "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": "admin"}}]}))
    try:
        cli = ["--kubeconfig", str(kubeconfig)]
        assert faults_cli.main([*cli, "node-not-ready", "node2"]) == 0
        assert faults_cli.main([*cli, "api-error", "--resource", "pods", "--code", "429", "--fraction", "0.5"]) == 0
        assert faults_cli.main([*cli, "slow-startup", "node1", "1.5"]) == 0
        assert faults.node_not_ready("node2") and faults.extra_startup_seconds("node1") == 1.5
        capsys.readouterr()
        assert faults_cli.main([*cli, "list"]) == 0
        assert [f["kind"] for f in json.loads(capsys.readouterr().out)["faults"]] == \
            ["node-not-ready", "api-error", "slow-startup"]
        assert faults_cli.main([*cli, "api-error", "--code", "418"]) == 1
        assert faults_cli.main([*cli, "clear", "--kind", "node-not-ready"]) == 0
        assert not faults.node_not_ready("node2") and len(faults.list()) == 2
        assert faults_cli.main([*cli, "clear"]) == 0
        assert faults.list() == []
    finally:
        server.shutdown()
        server.server_close()
