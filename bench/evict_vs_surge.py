"""Evict-first vs surge-first, side by side in one run: a single-replica Deployment behind a Service under a
steady HTTP probe, moved off node1 (a) by ``kubectl drain node1`` and (b) by a nodeSelector change to node2
with maxSurge=1/maxUnavailable=0. Each scenario gets a fresh, identically configured 2-node cluster."""
from __future__ import annotations

from .common import Kubectl, Result, cluster, create_app, now, pods, probing as probing_url, ready_pods, wait_for
from kubesim.resources import SERVICES

RATE, PORT, SETTLE_SECONDS = 25.0, 8080, 3.0


def probing(c, app: str):
    """The availability probe (GET / at RATE/s) on the app's Service clusterIP while the block runs."""
    url = f"http://{c.store.get(SERVICES, 'default', app)['spec']['clusterIP']}:{PORT}"
    return probing_url(url, RATE, SETTLE_SECONDS)


def _on(c, app: str, node: str) -> bool:
    ready = ready_pods(c, app)
    return len(ready) == 1 and ready[0]["spec"].get("nodeName") == node and \
        all(p["spec"].get("nodeName") == node for p in pods(c) if p["metadata"]["labels"].get("app") == app)


def evict_first() -> dict:
    with cluster(nodes=["node1", "node2"], run_processes=True) as c:
        kubectl = Kubectl(c)
        kubectl("cordon", "node2")   # the single replica starts on node1
        create_app(c, "web", 1, None, port=PORT)
        wait_for(lambda: _on(c, "web", "node1"), 60, what="web on node1")
        kubectl("uncordon", "node2")
        with probing(c, "web") as probe:
            started = now()
            kubectl("drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--force")
            drained = now() - started
            wait_for(lambda: _on(c, "web", "node2"), 60, what="web on node2")
            moved = now() - started
    return {**probe, "command_s": round(drained, 2), "moved_s": round(moved, 2)}


def surge_first() -> dict:
    with cluster(nodes=["node1", "node2"], run_processes=True) as c:
        kubectl = Kubectl(c)
        create_app(c, "web", 1, "node1", port=PORT)
        wait_for(lambda: _on(c, "web", "node1"), 60, what="web on node1")
        with probing(c, "web") as probe:
            started = now()
            kubectl("patch", "deployment", "web", "--type", "merge", "-p",
                    '{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node2"}}}}}')
            patched = now() - started
            kubectl("rollout", "status", "deployment/web", "--timeout=60s")
            wait_for(lambda: _on(c, "web", "node2"), 60, what="web on node2")
            moved = now() - started
    return {**probe, "command_s": round(patched, 2), "moved_s": round(moved, 2)}


def run() -> Result:
    result = Result("Evict-first vs surge-first", ".venv/bin/python -m bench evict_vs_surge")
    scenarios = {"(a) kubectl drain node1 (evict-first)": evict_first(),
                 "(b) nodeSelector -> node2, maxSurge=1/maxUnavailable=0 (surge-first)": surge_first()}
    for label, s in scenarios.items():
        result.add(f"{label}: requests sent / failed", f"{s['sent']} / {s['failed']}")
        result.add(f"{label}: longest gap without an answer (ms)", s["max_gap_ms"])
        result.add(f"{label}: errors", ", ".join(f"{k} x{v}" for k, v in s["errors"].items()) or "none")
        result.add(f"{label}: command returned / pod serving on node2 (s)", f"{s['command_s']} / {s['moved_s']}")
        result.raw[label] = s
    result.notes.append(f"probe: plugins/k8smove/availability.py run() at {RATE:.0f} GET/s on the Service clusterIP "
                        f"(2 s timeout), {SETTLE_SECONDS:.0f} s before and after the move; image nginx (built-in "
                        "responder) with an HTTP readinessProbe (periodSeconds 1), terminationGracePeriodSeconds 1, "
                        "default pod_startup_seconds 0.5; each scenario in a fresh 2-node cluster, run one after "
                        "the other in the same invocation")
    return result
