"""Controllers at scale: 100 Deployments re-targeted to other nodes (nodeSelector change) at once.

A rolling update with maxSurge=S, maxUnavailable=0 cannot finish before ceil(replicas / S) waves of pod
startup, so each case reports that floor and the excess over it (target: excess <= 2 s).
BENCH_CONTROL_PLANE=real runs the same on the real control plane (its controller-manager and scheduler, with
upstream's default client rate limits) with kubesim's nodes; BENCH_NODES shrinks the cluster.
"""
from __future__ import annotations

import math
import os
import time

from .common import Result, all_rolled_out, cluster, deployment, node_names, now, pods, store, wait_for
from kubesim.resources import DEPLOYMENTS

NODES = DEPLOYMENT_COUNT = int(os.environ.get("BENCH_NODES", "100"))
POD_STARTUP = float(os.environ.get("BENCH_POD_STARTUP", "0.5"))
CONTROL_PLANE = os.environ.get("BENCH_CONTROL_PLANE", "kubesim")
POLL = 0.05 if CONTROL_PLANE == "kubesim" else 0.5   # a LIST of every pod costs the real API server more
# (replicas, maxSurge): the single-replica and 20-replica cases, plus the 25% surge the author used
CASES = ((1, 1), (20, 1), (20, "25%"))


def _surge_pods(replicas: int, surge) -> int:
    if isinstance(surge, str):
        return math.ceil(replicas * int(surge.rstrip("%")) / 100)
    return surge


def _node_for(i: int, shift: int = 0) -> str:
    return f"node{(i + shift) % NODES + 1}"


def _retarget(c, i: int) -> None:
    def move(d):
        d["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": _node_for(i, NODES // 2)}
    store(c).mutate(DEPLOYMENTS, "default", f"app-{i:03d}", move)


def _moved(c) -> bool:
    return all(p["spec"].get("nodeName") == _node_for(int(p["metadata"]["labels"]["app"][4:]), NODES // 2)
               for p in pods(c, "default"))


def measure(replicas: int, surge, profile: str | None = None) -> dict:
    with cluster(nodes=node_names(NODES), run_processes=False, pod_startup_seconds=POD_STARTUP,
                 control_plane=CONTROL_PLANE) as c:
        for i in range(DEPLOYMENT_COUNT):
            store(c).create(DEPLOYMENTS, deployment(f"app-{i:03d}", replicas, _node_for(i), max_surge=surge))
        wait_for(lambda: all_rolled_out(c), 900, max(POLL, 0.1), "initial rollouts")
        time.sleep(0.5)
        profiler = None
        if profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()   # profiles this thread only: see bench.profile for every thread
        started, cpu = now(), time.process_time()
        for i in range(DEPLOYMENT_COUNT):
            _retarget(c, i)
        wait_for(lambda: all_rolled_out(c) and _moved(c), 1200, POLL, "all rollouts")
        elapsed, cpu = now() - started, time.process_time() - cpu
        if profiler:
            profiler.disable()
        waves = math.ceil(replicas / _surge_pods(replicas, surge))
        return {"replicas": replicas, "surge": surge, "seconds": round(elapsed, 2), "waves": waves,
                "floor": round(waves * POD_STARTUP, 2), "excess": round(elapsed - waves * POD_STARTUP, 2),
                "pods": len(pods(c)), "cpu_seconds": round(cpu, 2)}


def run() -> Result:
    result = Result(f"Controllers ({CONTROL_PLANE} control plane): {DEPLOYMENT_COUNT} Deployments re-targeted at once",
                    f"BENCH_CONTROL_PLANE={CONTROL_PLANE} BENCH_NODES={NODES} .venv/bin/python -m bench controllers")
    result.notes.append(f"{NODES} nodes, run_processes=False, pod_startup_seconds={POD_STARTUP} "
                        "(BENCH_POD_STARTUP overrides), maxUnavailable=0; deployment i moves from node i+1 to "
                        f"node (i+{NODES // 2})%{NODES}+1 by a nodeSelector change written through the API for all of them at once; "
                        "done = every Deployment rolled out (observedGeneration, updated/available replicas) "
                        "and every pod on its new node")
    for replicas, surge in CASES:
        m = measure(replicas, surge)
        label = f"{DEPLOYMENT_COUNT} x {replicas} replicas, maxSurge={surge}"
        result.add(f"{label}: all rollouts complete (s)", m["seconds"])
        result.add(f"{label}: CPU time of kubesim's process during the rollouts (s)", m["cpu_seconds"])
        result.add(f"{label}: floor = {m['waves']} wave(s) x {POD_STARTUP} s startup; excess (s)",
                   m["excess"], "excess <= 2 s", m["excess"] <= 2)
        result.raw[label] = m
    return result
