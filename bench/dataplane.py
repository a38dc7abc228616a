"""Data plane: connection setup through a Service proxy vs straight to the pod, and 50 real pods (built-in
responder image) on one node: time to all Ready, memory per pod, time to all gone, no leftover process."""
from __future__ import annotations

import socket

from .common import (Result, api_client, child_pids, cluster, create_app, now, pods, processes_of_pods, pss_mib,
                     ready_pods, rss_mib, summary_ms, wait_for)
from kubesim.resources import SERVICES

PODS_COUNT, PORT, SAMPLES = 50, 8080, 300


def first_byte_seconds(address: tuple[str, int]) -> float:
    """Connect, send a request, read the first byte of the answer: what a client waits before data flows."""
    start = now()
    with socket.create_connection(address, timeout=2) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        s.recv(1)
    return now() - start


def proxy_overhead(c) -> dict:
    create_app(c, "one", 1, None, port=PORT)
    wait_for(lambda: ready_pods(c, "one"), 60, what="pod one Ready")
    pod_ip = ready_pods(c, "one")[0]["status"]["podIP"]
    cluster_ip = c.store.get(SERVICES, "default", "one")["spec"]["clusterIP"]

    def serving():
        try:
            return first_byte_seconds((cluster_ip, PORT))
        except OSError:
            return None
    wait_for(serving, 30, what="the Service proxy")
    direct, proxied = [], []
    for _ in range(SAMPLES):   # interleaved so both see the same machine load
        direct.append(first_byte_seconds((pod_ip, PORT)))
        proxied.append(first_byte_seconds((cluster_ip, PORT)))
    return {"direct": summary_ms(direct), "proxied": summary_ms(proxied)}


def run() -> Result:
    from kubernetes import client
    result = Result("Data plane: Service proxy and 50 real pods", ".venv/bin/python -m bench dataplane")
    with cluster(nodes=["node1"], run_processes=True, pod_startup_seconds=0.0) as c:
        overhead = proxy_overhead(c)
        extra = round(overhead["proxied"]["p50"] - overhead["direct"]["p50"], 3)
        result.add("connect + request + first byte, direct to pod p50 / p95 (ms)",
                   f"{overhead['direct']['p50']} / {overhead['direct']['p95']}")
        result.add("connect + request + first byte, via Service clusterIP p50 / p95 (ms)",
                   f"{overhead['proxied']['p50']} / {overhead['proxied']['p95']}")
        result.add("proxy overhead p50 (ms)", extra, "<= 1 ms", extra <= 1.0)

        baseline_children = set(child_pids())
        rss_before = rss_mib()
        started = now()
        create_app(c, "web", PODS_COUNT, "node1", port=PORT)
        wait_for(lambda: len(ready_pods(c, "web")) == PODS_COUNT, 180, 0.05, f"{PODS_COUNT} pods Ready")
        result.add(f"{PODS_COUNT} pods (image nginx = built-in responder): create -> all Ready (s)",
                   round(now() - started, 2))
        uids = {p["metadata"]["uid"] for p in pods(c) if p["metadata"]["labels"].get("app") == "web"}
        procs = processes_of_pods(uids)
        rss = [rss_mib(pid) for pid in procs]
        pss = [pss_mib(pid) for pid in procs]
        result.add("pod processes found (KUBESIM_POD_UID)", len(procs), f"{PODS_COUNT}", len(procs) == PODS_COUNT)
        result.add("memory per pod process: RSS mean / PSS mean (MiB)",
                   f"{sum(rss) / len(rss):.1f} / {sum(pss) / len(pss):.1f}")
        result.add(f"memory of all {PODS_COUNT} pods: RSS sum / PSS sum (MiB)", f"{sum(rss):.0f} / {sum(pss):.0f}")
        result.add("kubesim process RSS growth for the 50 pods (MiB)", round(rss_mib() - rss_before, 1))

        started = now()
        client.AppsV1Api(api_client(c)).delete_namespaced_deployment("web", "default")
        wait_for(lambda: not any(p["metadata"]["labels"].get("app") == "web" for p in pods(c)), 120, 0.05,
                 "web pods gone")
        gone_objects = now() - started
        wait_for(lambda: not processes_of_pods(uids), 30, 0.05, "web processes gone")
        result.add("delete Deployment -> all pod objects gone (s)", round(gone_objects, 2))
        result.add("delete Deployment -> all pod processes gone (s)", round(now() - started, 2))
        leftover_children = set(child_pids()) - baseline_children
        result.add("leftover processes after the pods are gone", len(leftover_children), "0",
                   not leftover_children)
    after_stop = processes_of_pods(uids) + child_pids()
    result.add("processes left after the cluster stopped (children + marked)", len(after_stop), "0", not after_stop)
    result.notes.append("one node, pod_startup_seconds=0 (Ready time is the data plane's own: spawn + readiness "
                        "probe, periodSeconds 1); pods and Services created through the API with the kubernetes "
                        f"client; overhead: {SAMPLES} interleaved samples each of a fresh TCP connection, an HTTP/1.0 "
                        "GET and its first byte, direct to the pod IP vs the Service clusterIP; memory from "
                        "/proc/<pid>/status VmRSS and /proc/<pid>/smaps_rollup Pss of every process marked "
                        "KUBESIM_POD_UID")
    result.raw = overhead
    return result
