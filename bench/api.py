"""API server at scale: 100 nodes and 2,000 pods (run_processes=False).

list-all-pods latency with the real ``kubernetes`` client over HTTP (raw response and fully deserialised),
``kubectl get pods -A`` wall time, write -> watch event latency (client watch and raw HTTP stream) and the
process RSS at 2,000 pods.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

from .common import (Kubectl, Result, api_client, cluster, node_names, now, pod_ready, pods, rss_mib,
                     summary_ms, timed, wait_for)
from kubesim.resources import NAMESPACES, PODS

NODES, PODS_TOTAL, NAMESPACE_COUNT = 100, 2000, 10
LIST_REPEAT, WATCH_SAMPLES = 30, 200


def _seed_pods(c) -> None:
    """2,000 pods spread over 10 namespaces and bound round-robin to the 100 nodes (the kubelets run them)."""
    for n in range(NAMESPACE_COUNT):
        c.store.create(NAMESPACES, {"metadata": {"name": f"bench-{n}"}})
    nodes = c.config.nodes
    for i in range(PODS_TOTAL):
        c.store.create(PODS, {"metadata": {"name": f"pod-{i:04d}", "namespace": f"bench-{i % NAMESPACE_COUNT}",
                                           "labels": {"app": f"app-{i % 100}"}},
                              "spec": {"nodeName": nodes[i % len(nodes)],
                                       "containers": [{"name": "app", "image": "demo/app:1",
                                                       "ports": [{"containerPort": 8080}]}]}})
    wait_for(lambda: sum(pod_ready(p) for p in pods(c)) == PODS_TOTAL, 120, 0.2, "2,000 pods Ready")


def _watch_latency(c, write, open_stream) -> list[float]:
    """Write an annotation on one pod at a time and time until its MODIFIED event reaches the client."""
    arrived: dict[str, float] = {}
    got = threading.Event()
    rv = str(c.store.resource_version)
    stream = open_stream(rv)

    def reader():
        try:
            for name in stream:
                if name is None:
                    return
                arrived.setdefault(name, now())
                got.set()
        except Exception:   # the stream ends when the cluster stops
            return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    samples = []
    for i in range(WATCH_SAMPLES):
        name = f"pod-{i * 7 % PODS_TOTAL:04d}"
        got.clear()
        start = now()
        write(name, i)
        if not got.wait(5):
            raise TimeoutError(f"no watch event for {name}")
        samples.append(arrived[name] - start)
        arrived.clear()
        time.sleep(0.005)
    return samples


def _store_write(c):
    seq = iter(range(10**9))   # a fresh value per write: a write that changes nothing sends no event

    def write(name: str, i: int) -> None:
        value = str(next(seq))

        def annotate(pod):
            pod["metadata"].setdefault("annotations", {})["bench/seq"] = value
        c.store.mutate(PODS, f"bench-{int(name[4:]) % NAMESPACE_COUNT}", name, annotate)
    return write


def _client_watch(api):
    """The kubernetes client's Watch over HTTP (objects deserialised into V1Pod models, as users get them)."""
    from kubernetes import client, watch

    def open_stream(rv):
        w = watch.Watch()
        events = w.stream(client.CoreV1Api(api).list_pod_for_all_namespaces, resource_version=rv,
                          timeout_seconds=120)
        return (e["object"].metadata.name for e in events)
    return open_stream


def _raw_watch(url: str):
    """A raw chunked HTTP watch stream (JSON lines), no client library in between."""
    parts = urllib.parse.urlsplit(url)

    def open_stream(rv):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("GET", f"/api/v1/pods?watch=1&resourceVersion={rv}",
                     headers={"Authorization": "Bearer kubesim-admin"})
        response = conn.getresponse()

        def lines():
            while True:
                line = response.readline()
                if not line:
                    yield None
                    return
                yield json.loads(line)["object"]["metadata"]["name"]
        return lines()
    return open_stream


def run() -> Result:
    from kubernetes import client
    result = Result("API at 100 nodes / 2,000 pods", ".venv/bin/python -m bench api")
    with cluster(nodes=node_names(NODES), run_processes=False, pod_startup_seconds=0.5) as c:
        rss_before = rss_mib()
        started = now()
        _seed_pods(c)
        result.add("seed 2,000 pods through the store until all Ready (s)", round(now() - started, 2))
        time.sleep(1)   # let the kubelets' status writes settle
        result.add("kubesim process RSS at 2,000 pods (MiB)", rss_mib(), "record")
        result.add("RSS growth from empty 100-node cluster (MiB)", round(rss_mib() - rss_before, 1))

        api = api_client(c)
        core = client.CoreV1Api(api)

        def raw_list():
            response = core.list_pod_for_all_namespaces(_preload_content=False)
            body = response.data
            assert body.count(b'"uid"') >= PODS_TOTAL
        size = len(core.list_pod_for_all_namespaces(_preload_content=False).data)
        result.add("list all pods response size (KiB)", round(size / 1024))
        raw = summary_ms(timed(raw_list, LIST_REPEAT))
        result.add("list all pods, client HTTP + body read, p50 (ms)", raw["p50"], "p50 <= 50 ms",
                   raw["p50"] <= 50)
        result.add("list all pods, client HTTP + body read, p95 (ms)", raw["p95"])
        full = summary_ms(timed(lambda: core.list_pod_for_all_namespaces(), 5))
        result.add("list all pods, client deserialised to V1PodList, p50 / p95 (ms)", f"{full['p50']} / {full['p95']}")

        kubectl = Kubectl(c)
        kubectl("get", "pods", "-A")   # warm the discovery cache
        wall = summary_ms(timed(lambda: kubectl("get", "pods", "-A"), 5))
        result.add("`kubectl get pods -A` wall time p50 / max (ms)", f"{wall['p50']} / {wall['max']}")

        write = _store_write(c)
        client_w = summary_ms(_watch_latency(c, write, _client_watch(api)))
        result.add("write -> watch event, kubernetes client Watch, p50 (ms)", client_w["p50"], "<= 20 ms",
                   client_w["p50"] <= 20)
        result.add("write -> watch event, kubernetes client Watch, p95 (ms)", client_w["p95"], "<= 20 ms",
                   client_w["p95"] <= 20)
        raw_w = summary_ms(_watch_latency(c, write, _raw_watch(c.url)))
        result.add("write -> watch event, raw HTTP stream, p50 / p95 (ms)", f"{raw_w['p50']} / {raw_w['p95']}",
                   "<= 20 ms", raw_w["p95"] <= 20)
        result.raw = {"list_raw": raw, "list_full": full, "kubectl": wall, "watch_client": client_w,
                      "watch_raw": raw_w}
        result.notes.append(f"list samples: {LIST_REPEAT} sequential calls after one warm-up; watch: "
                            f"{WATCH_SAMPLES} sequential annotation writes (store.mutate), one at a time, "
                            "timed from before the write to the event's arrival at the client thread")
    return result
