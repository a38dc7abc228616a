"""Shared by the real-control-plane node tests: the cluster settings and a kubectl runner."""
from __future__ import annotations

import json
import os
import subprocess

# Heartbeats every 2 s and a node-monitor grace of 8 s: a stopped kubelet turns into the real node-lifecycle
# controller's taints within seconds, and a healthy one never misses the grace.
REAL = dict(control_plane="real", nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0,
            heartbeat_seconds=2.0, node_monitor_grace_seconds=8.0)


def kubectl_runner(kubeconfig: str, home: str):
    """kubectl (the one on PATH, as make test puts .venv/bin first) with this kubeconfig; check=True asserts 0."""
    def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
        proc = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=input, capture_output=True,
                              text=True, timeout=timeout,
                              env={"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    run.json = lambda *args: json.loads(run(*args, "-o", "json").stdout)
    return run
