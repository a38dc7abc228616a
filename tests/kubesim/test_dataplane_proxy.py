"""Service proxies: real TCP through a Service, only to Ready endpoints, while endpoints change."""
from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time
import urllib.request

import pytest
from dataplane_support import create_pod, make_dataplane, wait_for, wait_ready

from kubesim import resources
from kubesim.dataplane import PROXY_ADDRESS_ANNOTATION

CLUSTER_IP = "127.95.7.1"   # outside 127.96.0.0/14, where running clusters allocate theirs
POD_IPS = {"web-a": "127.0.70.1", "web-b": "127.0.70.2"}


@pytest.fixture
def plane(tmp_path):
    store, dataplane, faults = make_dataplane(tmp_path)
    pods = {}
    for name, ip in POD_IPS.items():
        pods[name] = create_pod(store, name, [{"name": "web", "image": "k8smove/web:1",
                                               "ports": [{"name": "http", "containerPort": 8080}]}])
        dataplane.runtime.start_pod(pods[name], "node1", ip)
    for pod in pods.values():
        wait_ready(dataplane, pod, "web")
    yield store, dataplane, pods
    dataplane.stop()


def service(store, name: str = "web", **spec) -> dict:
    return store.create(resources.SERVICES, {"metadata": {"name": name, "namespace": "default"}, "spec": {
        "clusterIP": CLUSTER_IP, "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 8080, "targetPort": "http"}], **spec}})


def set_endpoints(store, ready: list[str], not_ready: list[str] = (), name: str = "web") -> None:
    subset = {"ports": [{"name": "http", "port": 8080}]}
    if ready:
        subset["addresses"] = [{"ip": POD_IPS[p], "targetRef": {"kind": "Pod", "name": p}} for p in ready]
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": POD_IPS[p]} for p in not_ready]
    endpoints = {"metadata": {"name": name, "namespace": "default"}, "subsets": [subset]}
    if store.find(resources.ENDPOINTS, "default", name) is None:
        store.create(resources.ENDPOINTS, endpoints)
    else:
        store.update(resources.ENDPOINTS, endpoints)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)["pod"]


def serving(url: str, pod: str) -> bool:
    try:
        return get(url) == pod
    except OSError:
        return False


def test_endpoint_switch_loses_no_request(plane):
    store, dataplane, pods = plane
    service(store)
    set_endpoints(store, ["web-a"])
    url = f"http://{CLUSTER_IP}:8080/"
    wait_for(lambda: serving(url, "web-a"), what="the proxy to serve web-a")

    answers: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:  # a new connection per request, 40 requests/s
        while not stop.is_set():
            sent = time.monotonic()
            try:
                answers.append((sent, get(url)))
            except OSError as error:
                failures.append(repr(error))
            stop.wait(max(0.0, sent + 0.025 - time.monotonic()))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(0.5)
        set_endpoints(store, ["web-a", "web-b"])              # B ready first …
        time.sleep(0.5)
        set_endpoints(store, ["web-b"], not_ready=["web-a"])  # … then A leaves
        switched = time.monotonic()
        time.sleep(0.1)
        dataplane.runtime.stop_pod(pods["web-a"]["metadata"]["uid"], 1)   # and its process goes away
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    duration = answers[-1][0] - answers[0][0]
    assert failures == []
    assert len(answers) / duration >= 20
    served = [pod for _, pod in answers]
    assert served[0] == "web-a" and served[-1] == "web-b" and {"web-a", "web-b"} == set(served)
    assert all(pod == "web-b" for sent, pod in answers if sent > switched)


def test_no_ready_endpoint_refuses_connections(plane):
    store, dataplane, _ = plane
    service(store)
    set_endpoints(store, [], not_ready=["web-a"])
    wait_for(lambda: dataplane.proxy.listening("default", "web"), what="the listener")
    started = time.monotonic()
    with pytest.raises((ConnectionResetError, ConnectionRefusedError, http.client.RemoteDisconnected)):
        with socket.create_connection((CLUSTER_IP, 8080), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if sock.recv(1) == b"":
                raise ConnectionResetError("closed without an answer")
    assert time.monotonic() - started < 1
    set_endpoints(store, ["web-b"])
    wait_for(lambda: serving(f"http://{CLUSTER_IP}:8080/", "web-b"), what="web-b behind the Service")


def test_established_connection_outlives_its_endpoint(plane):
    store, _, _ = plane
    service(store)
    set_endpoints(store, ["web-a"])
    wait_for(lambda: serving(f"http://{CLUSTER_IP}:8080/", "web-a"), what="web-a behind the Service")
    kept = http.client.HTTPConnection(CLUSTER_IP, 8080, timeout=2)
    kept.request("GET", "/")
    assert json.load(kept.getresponse())["pod"] == "web-a"
    set_endpoints(store, ["web-b"], not_ready=["web-a"])
    wait_for(lambda: serving(f"http://{CLUSTER_IP}:8080/", "web-b"), what="new connections to go to web-b")
    kept.request("GET", "/again")
    assert json.load(kept.getresponse())["pod"] == "web-a"
    kept.close()


def test_external_ips_node_ports_and_the_fallback_address(plane):
    store, dataplane, _ = plane
    # 192.0.2.0/24 is TEST-NET-1: never local, so the proxy must fall back (and nothing is sent there)
    service(store, type="NodePort", externalIPs=["127.0.80.1", "192.0.2.10"],
            ports=[{"name": "http", "port": 8080, "targetPort": "http", "nodePort": 30080}])
    set_endpoints(store, ["web-a"])
    wait_for(lambda: serving(f"http://{CLUSTER_IP}:8080/", "web-a"), what="web-a behind the Service")
    annotated = wait_for(lambda: (store.get(resources.SERVICES, "default", "web")["metadata"].get("annotations") or {})
                         .get(PROXY_ADDRESS_ANNOTATION), what="the proxy-address annotation")
    host, port = annotated.split(":")
    assert host == "127.0.0.1" and int(port) > 0
    for url in (f"http://{CLUSTER_IP}:8080/", "http://127.0.80.1:8080/", f"http://{annotated}/",
                "http://127.0.1.1:30080/", "http://127.0.1.2:30080/"):
        assert get(url) == "web-a", url
    listening = dataplane.proxy.listening("default", "web")
    assert listening[("http", "external", "192.0.2.10", 8080)] == ("127.0.0.1", int(port))

    store.delete(resources.SERVICES, "default", "web")
    wait_for(lambda: not dataplane.proxy.listening("default", "web"), what="the listeners to close")
    with pytest.raises(OSError):
        socket.create_connection((CLUSTER_IP, 8080), timeout=1).close()


def test_endpoint_slices_with_ready_conditions(plane):
    store, _, _ = plane
    service(store)
    set_endpoints(store, ["web-a"])   # ignored once the Service has EndpointSlices
    store.create(resources.ENDPOINTSLICES, {
        "metadata": {"name": "web-x1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [POD_IPS["web-a"]], "conditions": {"ready": False, "terminating": True}},
                      {"addresses": [POD_IPS["web-b"]], "conditions": {"ready": True}}]})
    wait_for(lambda: serving(f"http://{CLUSTER_IP}:8080/", "web-b"), what="web-b behind the Service")
    assert {get(f"http://{CLUSTER_IP}:8080/") for _ in range(6)} == {"web-b"}


def _first_byte_seconds(address: tuple[str, int]) -> float:
    started = time.perf_counter()
    with socket.create_connection(address) as sock:
        sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        sock.recv(1)
    return time.perf_counter() - started


def test_proxy_connection_overhead(plane):
    store, _, _ = plane
    service(store)
    set_endpoints(store, ["web-a"])
    wait_for(lambda: serving(f"http://{CLUSTER_IP}:8080/", "web-a"), what="web-a behind the Service")
    samples = {"direct": [], "proxied": []}
    for _ in range(200):  # interleaved so both see the same machine load
        samples["direct"].append(_first_byte_seconds((POD_IPS["web-a"], 8080)))
        samples["proxied"].append(_first_byte_seconds((CLUSTER_IP, 8080)))
    overhead_ms = (statistics.median(samples["proxied"]) - statistics.median(samples["direct"])) * 1000
    print(f"proxy adds {overhead_ms:.3f} ms p50 to connect + first byte "
          f"(direct p50 {statistics.median(samples['direct']) * 1000:.3f} ms)")
    assert overhead_ms <= 1.0
