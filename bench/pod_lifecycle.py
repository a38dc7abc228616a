"""Pods on kubesim's nodes, both control planes side by side in one sitting (issue 14): a pod from create to Ready
(the HTTP responder with a readiness probe), a busybox pod from create to Succeeded (its command in the sandbox),
and one `kubectl exec` (WebSocket, through the API server; on the real one through the node's kubelet API).

Each control plane gets one two-node cluster (start-up time reported); ROUNDS rounds, the two clusters alternating
round by round so machine noise falls on both alike. Times are wall clock from before `kubectl apply` to the
`kubectl wait` that saw the condition (kubectl's own start-up included, as a user sees it).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time

from .common import Result, percentile

ROUNDS = 8
READY_POD = """{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "%s", "namespace": "default"},
 "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": "nginx:1.27",
  "ports": [{"containerPort": 8080}], "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
  "periodSeconds": 1}}]}}"""
JOB_POD = """{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "%s", "namespace": "default"},
 "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1.36",
  "command": ["sh", "-c", "echo done"]}]}}"""


def _kubectl(kubeconfig: str, *args: str, input: str | None = None) -> None:
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=input, text=True, check=True,
                   capture_output=True, timeout=120)


def _timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def run() -> Result:
    from kubesim.cluster import Cluster

    result = Result("Pods on kubesim's nodes: kubesim's API server vs the real control plane",
                    ".venv/bin/python -m bench pod_lifecycle")
    figures: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pods-") as work:
        clusters = {}
        try:
            for plane in ("kubesim", "real"):
                start = time.monotonic()
                clusters[plane] = Cluster(nodes=["node1", "node2"], control_plane=plane, pod_startup_seconds=0.0,
                                          max_grace_seconds=1.0, work_dir=os.path.join(work, plane),
                                          kubeconfig_path=os.path.join(work, f"{plane}.kubeconfig")).start()
                figures[plane] = {"start": [time.monotonic() - start], "ready": [], "succeeded": [], "exec": []}
            for i in range(ROUNDS):
                for plane, cluster in clusters.items():
                    kc, f = cluster.kubeconfig_path, figures[plane]
                    web, job = f"web-{i}", f"job-{i}"
                    f["ready"].append(_timed(lambda: (
                        _kubectl(kc, "apply", "-f", "-", input=READY_POD % web),
                        _kubectl(kc, "wait", "--for=condition=Ready", f"pod/{web}", "--timeout=60s"))))
                    f["succeeded"].append(_timed(lambda: (
                        _kubectl(kc, "apply", "-f", "-", input=JOB_POD % job),
                        _kubectl(kc, "wait", "--for=jsonpath={.status.phase}=Succeeded", f"pod/{job}",
                                 "--timeout=60s"))))
                    f["exec"].append(_timed(lambda: _kubectl(kc, "exec", web, "--", "true")))
                    _kubectl(kc, "delete", "pod", web, job, "--wait=false")
        finally:
            for cluster in clusters.values():
                cluster.stop()
    labels = {"start": "cluster start (2 nodes Ready to serve)", "ready": "pod create -> Ready (p50 / max)",
              "succeeded": "busybox pod create -> Succeeded (p50 / max)", "exec": "`kubectl exec … true` (p50 / max)"}
    for key, label in labels.items():
        cells = []
        for plane in ("kubesim", "real"):
            values = figures[plane][key]
            cells.append(f"{plane}: {values[0]:.2f} s" if key == "start" else
                         f"{plane}: {percentile(values, 0.5):.2f} / {max(values):.2f} s")
        result.add(label, "; ".join(cells))
    result.raw = figures
    result.notes.append(f"{ROUNDS} rounds, pod_startup_seconds=0 (the kubelet's simulated start delay off), "
                        "kubectl 1.36.3 started for every step")
    return result
