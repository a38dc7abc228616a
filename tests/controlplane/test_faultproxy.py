"""The faults proxy in front of the real kube-apiserver (kubesim/controlplane/faultproxy.py): faults strike with the
codes kubesim's API server answers, everything else passes through (watches, exec/attach/port-forward over WebSocket
and SPDY), and RBAC still judges the caller (a service-account token, the admin's client certificate)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest
import urllib3

from kubectl_support import check_attach, check_exec_and_logs, check_port_forward, kubectl_runner
from kubesim.controlplane.faultproxy import RequestInfo, request_info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster(control_plane, tmp_path_factory):
    """kubesim's nodes on the session's control plane, its clients behind the faults proxy."""
    from kubesim.cluster import Cluster

    work = tmp_path_factory.mktemp("faultproxy")
    with Cluster(control_plane="real", shared_control_plane=control_plane, api_faults=True, nodes=["node1", "node2"],
                 pod_startup_seconds=0.2, max_grace_seconds=1.0, work_dir=str(work / "kubesim"),
                 kubeconfig_path=str(work / "clients.kubeconfig")) as c:
        yield c


@pytest.fixture(scope="module")
def kubectl(cluster, tmp_path_factory):
    return kubectl_runner(cluster.kubeconfig_path, str(tmp_path_factory.mktemp("kubectl-home")), default_timeout=60)


@pytest.fixture
def faults(cluster):
    yield cluster.faults
    cluster.faults.clear()


def _pool(cluster, cert=True) -> urllib3.PoolManager:
    cp = cluster.control_plane
    return urllib3.PoolManager(ca_certs=cp.ca_file, cert_file=cp.admin_cert.cert if cert else None,
                               key_file=cp.admin_cert.key if cert else None, retries=False)


@pytest.mark.parametrize("method, target, expected", [
    ("GET", "/api/v1/pods", RequestInfo(True, "list", "pods")),
    ("GET", "/api/v1/namespaces/default/pods?watch=true&resourceVersion=5",
     RequestInfo(True, "watch", "pods", namespace="default")),
    ("GET", "/api/v1/namespaces/default/pods?watch=0", RequestInfo(True, "list", "pods", namespace="default")),
    ("GET", "/api/v1/watch/namespaces/default/pods/p", RequestInfo(True, "watch", "pods", "", "default", "p")),
    ("GET", "/apis/apps/v1/namespaces/ns/deployments/web",
     RequestInfo(True, "get", "apps/deployments", "", "ns", "web")),
    ("POST", "/apis/apps/v1/namespaces/ns/deployments", RequestInfo(True, "create", "apps/deployments", "", "ns")),
    ("PUT", "/apis/apps/v1/namespaces/ns/deployments/web/status",
     RequestInfo(True, "update", "apps/deployments", "status", "ns", "web")),
    ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/web/scale",
     RequestInfo(True, "patch", "apps/deployments", "scale", "ns", "web")),
    ("DELETE", "/api/v1/namespaces/ns/pods/p", RequestInfo(True, "delete", "pods", "", "ns", "p")),
    ("DELETE", "/api/v1/namespaces/ns/pods", RequestInfo(True, "deletecollection", "pods", "", "ns")),
    ("POST", "/api/v1/namespaces/ns/pods/p/exec?command=sh", RequestInfo(True, "create", "pods", "exec", "ns", "p")),
    ("GET", "/api/v1/namespaces/ns/pods/p/portforward", RequestInfo(True, "get", "pods", "portforward", "ns", "p")),
    ("GET", "/api/v1/namespaces/ns", RequestInfo(True, "get", "namespaces", "", "ns", "ns")),
    ("PUT", "/api/v1/namespaces/ns/finalize", RequestInfo(True, "update", "namespaces", "finalize", "ns", "ns")),
    ("GET", "/api/v1/namespaces", RequestInfo(True, "list", "namespaces")),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
     RequestInfo(True, "update", "coordination.k8s.io/leases", "", "ns", "l")),
    ("GET", "/api/v1", RequestInfo(False, "get")),
    ("GET", "/apis/apps/v1", RequestInfo(False, "get")),
    ("GET", "/version", RequestInfo(False, "get")),
    ("GET", "/openapi/v3/apis/apps/v1", RequestInfo(False, "get")),
])
def test_requests_are_classified_as_kube_apiserver_does(method, target, expected):
    assert request_info(method, target) == expected


def test_faults_strike_with_kubesim_api_servers_codes(cluster, faults):
    pool = _pool(cluster)
    url = f"{cluster.url}/api/v1/namespaces/default/configmaps"
    faults.add("api-error", verb="list", resource="configmaps", code="429", retry_after=3, count=1)
    answer = pool.request("GET", url)
    assert answer.status == 429 and answer.headers["Retry-After"] == "3"
    assert json.loads(answer.data) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                       "message": "Too many requests, please try again later.",
                                       "reason": "TooManyRequests", "code": 429,
                                       "details": {"retryAfterSeconds": 3}}
    assert pool.request("GET", url).status == 200            # count=1: struck once
    faults.add("api-error", verb="create", resource="configmaps", code="500")
    assert pool.request("GET", url).status == 200            # another verb
    answer = pool.request("POST", url, body=json.dumps({"metadata": {"name": "x"}}),
                          headers={"Content-Type": "application/json"})
    assert answer.status == 500 and json.loads(answer.data)["reason"] == "InternalError"
    assert pool.request("GET", f"{url}/x").status == 404   # nothing was created
    faults.clear()
    faults.add("api-error", verb="get", resource="namespaces", code="timeout", seconds=1.0, count=1)
    started = time.monotonic()
    answer = pool.request("GET", f"{cluster.url}/api/v1/namespaces/default")
    assert answer.status == 504 and json.loads(answer.data)["reason"] == "Timeout"
    assert time.monotonic() - started >= 1.0
    latency = faults.add("api-latency", verb="get", resource="namespaces", seconds=0.5)
    started = time.monotonic()
    assert pool.request("GET", f"{cluster.url}/api/v1/namespaces/default").status == 200
    assert time.monotonic() - started >= 0.5 and latency.hits == 1
    # kubesim's own client and the nodes go to the API server directly: never struck
    faults.add("api-error", code="500")
    assert cluster.admin.request("GET", "/api/v1/namespaces/default")["metadata"]["name"] == "default"
    assert pool.request("GET", f"{cluster.url}/version").status == 200   # not a resource: no fault


def test_kubectl_sees_a_fault_as_from_the_api_server(kubectl, faults):
    faults.add("api-error", verb="list", resource="apps/deployments", code="500")
    failed = kubectl("get", "deployments", check=False)
    assert failed.returncode == 1
    assert "Error from server (InternalError): Internal error occurred: injected by kubesim fault" in failed.stderr
    faults.clear()
    faults.add("api-error", verb="list", resource="apps/deployments", code="429", count=1)
    assert kubectl("get", "deployments").returncode == 0        # client-go waits its Retry-After and retries


def test_a_watch_streams_through_as_it_happens(cluster, kube_client_of):
    from kubernetes import client, watch

    core = client.CoreV1Api(kube_client_of(cluster.kubeconfig_path))
    core.create_namespace({"metadata": {"name": "watched"}})
    seen: list[tuple[float, str]] = []
    stream = watch.Watch()

    def follow():
        for event in stream.stream(core.list_namespaced_config_map, "watched", timeout_seconds=30):
            seen.append((time.monotonic(), event["object"].metadata.name))
            if event["object"].metadata.name == "second":
                stream.stop()
    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(1.0)
    for name in ("first", "second"):
        created = time.monotonic()
        core.create_namespaced_config_map("watched", {"metadata": {"name": name}})
        deadline = time.monotonic() + 5
        while name not in [n for _, n in seen] and time.monotonic() < deadline:
            time.sleep(0.01)
        arrived = next(t for t, n in seen if n == name)     # StopIteration: the event never came
        assert arrived - created < 1.0, f"{name} arrived {arrived - created:.2f} s after it was created"
        time.sleep(0.5)
    follower.join(10)
    assert [n for _, n in seen if n != "kube-root-ca.crt"] == ["first", "second"]


def test_exec_logs_attach_and_port_forward_through_the_proxy(cluster, kubectl):
    """The upgrades as kubectl 1.36 and the Python client speak them (WebSocket exec and attach, port-forward's
    SPDY/3.1 tunnelled in a WebSocket) and the chunked follow of logs, all through the proxy. Plain SPDY upgrades
    (KUBECTL_REMOTE_COMMAND_WEBSOCKETS/KUBECTL_PORT_FORWARD_WEBSOCKETS=false) are relayed the same way, but kubesim's
    kubelet API refuses them (400), directly as through the proxy, so they cannot be shown working here."""
    check_exec_and_logs(kubectl, cluster.kubeconfig_path)
    check_attach(kubectl)
    check_port_forward(kubectl)


def test_rbac_answers_each_caller_as_itself(cluster, kubectl, tmp_path):
    """The admin's certificate arrives as kubesim-admin in system:masters (the front-proxy headers); a service
    account's token as that account, with its own RBAC answers; a caller's own X-Remote-User is dropped."""
    whoami = kubectl.json("auth", "whoami")["status"]["userInfo"]
    assert whoami["username"] == "kubesim-admin" and "system:masters" in whoami["groups"]
    kubectl("create", "namespace", "rbac-through-proxy")
    kubectl("create", "serviceaccount", "reader", "-n", "rbac-through-proxy")
    kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", "rbac-through-proxy")
    kubectl("create", "rolebinding", "reader", "--role=pod-reader", "--serviceaccount=rbac-through-proxy:reader",
            "-n", "rbac-through-proxy")
    token = kubectl("create", "token", "reader", "-n", "rbac-through-proxy").stdout.strip()
    reader_config = tmp_path / "reader.kubeconfig"     # the token alone (with a certificate too, the certificate wins)
    config = json.loads(open(cluster.kubeconfig_path).read())
    config["users"][0]["user"] = {"token": token}
    reader_config.write_text(json.dumps(config))
    as_reader = kubectl_runner(str(reader_config), str(tmp_path / "home"), default_timeout=60)
    who = as_reader.json("auth", "whoami")["status"]["userInfo"]
    assert who["username"] == "system:serviceaccount:rbac-through-proxy:reader"
    assert as_reader("auth", "can-i", "list", "pods", "-n", "rbac-through-proxy").stdout == "yes\n"
    assert as_reader("get", "pods", "-n", "rbac-through-proxy").returncode == 0
    denied = as_reader("get", "pods", "-n", "default", check=False)
    assert denied.returncode == 1 and ('User "system:serviceaccount:rbac-through-proxy:reader" cannot list resource '
                                       '"pods" in API group "" in the namespace "default"') in denied.stderr
    forged = _pool(cluster, cert=False).request(
        "GET", f"{cluster.url}/api/v1/namespaces/default/pods",
        headers={"Authorization": f"Bearer {token}", "X-Remote-User": "kubesim-admin",
                 "X-Remote-Group": "system:masters"})
    assert forged.status == 403 and b"system:serviceaccount:rbac-through-proxy:reader" in forged.data
    anonymous = _pool(cluster, cert=False).request("GET", f"{cluster.url}/api/v1/namespaces/default/pods",
                                                   headers={"X-Remote-User": "kubesim-admin"})
    assert anonymous.status in (401, 403) and b"kubesim-admin" not in anonymous.data

    # the admin endpoint: the admin may, the service account may not (a SelfSubjectAccessReview as the caller)
    cli = [sys.executable, "-m", "kubesim", "fault"]
    added = subprocess.run([*cli, "--kubeconfig", cluster.kubeconfig_path, "api-error", "--resource", "secrets"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert added.returncode == 0, added.stderr
    assert [f["resource"] for f in cluster.faults.list()] == ["secrets"]
    refused = subprocess.run([*cli, "--kubeconfig", str(reader_config), "clear"], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)
    assert refused.returncode == 1 and json.loads(refused.stdout)["message"] == (
        'forbidden: User "system:serviceaccount:rbac-through-proxy:reader" cannot delete path "/kubesim/faults"')
    assert len(cluster.faults.list()) == 1
    listed = subprocess.run([*cli, "--kubeconfig", cluster.kubeconfig_path, "list"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert json.loads(listed.stdout)["faults"][0]["kind"] == "api-error"
    cleared = subprocess.run([*cli, "--kubeconfig", cluster.kubeconfig_path, "clear"], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert cleared.returncode == 0 and cluster.faults.list() == []


def test_what_the_proxy_adds_per_request(cluster, kube_client_of):
    """The same GET, 200 times each, through the proxy and to the API server, one kept-alive connection each."""
    from kubernetes import client

    timings = {}
    for name, path in (("proxy", cluster.kubeconfig_path), ("direct", cluster.control_plane.kubeconfig_path)):
        core = client.CoreV1Api(kube_client_of(path))
        core.read_namespace("default")
        samples = []
        for _ in range(200):
            started = time.perf_counter()
            core.read_namespace("default")
            samples.append((time.perf_counter() - started) * 1000)
        timings[name] = statistics.median(samples)
    added = timings["proxy"] - timings["direct"]
    print(f"median GET: proxy {timings['proxy']:.2f} ms, direct {timings['direct']:.2f} ms, added {added:.2f} ms")
    assert added < 10, timings    # a few ms on a loaded 2-core machine; a regression (a new connection each) is more


@pytest.fixture
def kube_client_of():
    from kubernetes import config

    made = []

    def make(path):
        made.append(config.new_client_from_config(config_file=path))
        return made[-1]
    yield make
    for api_client in made:
        api_client.close()
