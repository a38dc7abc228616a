"""Shared by the real-control-plane node tests: the cluster settings."""
from __future__ import annotations

# Heartbeats every 2 s and a node-monitor grace of 8 s: a stopped kubelet turns into the real node-lifecycle
# controller's taints within seconds, and a healthy one never misses the grace.
REAL = dict(control_plane="real", nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0,
            heartbeat_seconds=2.0, node_monitor_grace_seconds=8.0)
