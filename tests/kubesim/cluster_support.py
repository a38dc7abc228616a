"""Helpers for the whole-cluster tests: the real kubectl, manifests, waiting, watching pods."""
from __future__ import annotations

import functools
import os
import subprocess
import threading
import time

import yaml
from kubernetes import client, watch

import waiting


def kubectl(cluster, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the kubectl on PATH against the cluster; check=True asserts exit 0 (showing stderr if not)."""
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig_path)
    proc = subprocess.run(["kubectl", *args], env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


wait_for = functools.partial(waiting.wait_for, interval=0.1)

def deployment(name: str, replicas: int = 1, image: str = "nginx:1.27", node: str | None = None,
               strategy: dict | None = None, port: int = 80, probe: bool = True, **pod_spec) -> dict:
    container = {"name": "web", "image": image, "ports": [{"containerPort": port}]}
    if probe:
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1}
    spec = {"containers": [container], "terminationGracePeriodSeconds": 1, **pod_spec}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}
    if strategy:
        dep["spec"]["strategy"] = strategy
    return dep


def service(name: str, port: int = 80, target: int = 80, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target}], **spec}}


SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
RECREATE = {"type": "Recreate"}


def dump(*objs: dict) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


def pods_of(cluster, app: str) -> list[dict]:
    from kubesim.resources import PODS
    return [p for p in cluster.store.list(PODS, "default") if p["metadata"].get("labels", {}).get("app") == app]


def is_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def ready_pods(cluster, app: str, node: str | None = None) -> list[dict]:
    return [p for p in pods_of(cluster, app) if is_ready(p) and not p["metadata"].get("deletionTimestamp")
            and (node is None or p["spec"].get("nodeName") == node)]


def wait_rolled_out(cluster, name: str, timeout: float = 30) -> None:
    kubectl(cluster, "rollout", "status", f"deployment/{name}", f"--timeout={int(timeout)}s", timeout=timeout + 10)


class PodWatch:
    """A kubernetes-client watch on the pods of one app, in a thread: every event with its time."""

    def __init__(self, api_client, app: str):
        self.core = client.CoreV1Api(api_client)
        self.app = app
        self.events: list[tuple[float, str, object]] = []
        self._watch = watch.Watch()
        self._started = threading.Event()
        self._stopping = False
        self.error: Exception | None = None
        self.listed = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        listing = self.core.list_namespaced_pod("default", label_selector=f"app={self.app}")
        for pod in listing.items:
            self.events.append((time.monotonic(), "ADDED", pod))
        self.listed = len(self.events)
        self._started.set()
        try:
            for ev in self._watch.stream(self.core.list_namespaced_pod, "default", label_selector=f"app={self.app}",
                                         resource_version=listing.metadata.resource_version, timeout_seconds=120):
                self.events.append((time.monotonic(), ev["type"], ev["object"]))
        except Exception as exc:  # noqa: BLE001  (kept for the test to see; a stopped watch may end abruptly)
            if not self._stopping:
                self.error = exc

    def __enter__(self) -> "PodWatch":
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)   # let the last events arrive
        self._stopping = True
        self._watch.stop()
        self._thread.join(5)

    @staticmethod
    def ready(pod) -> bool:
        return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))

    def states(self):
        """Replay the watch events after the initial listing: (time, type, pod, {name: pod} after the event)."""
        assert self.error is None, f"the watch failed: {self.error!r}"
        current: dict[str, object] = {}
        for i, (at, kind, pod) in enumerate(self.events):
            if kind == "DELETED":
                current.pop(pod.metadata.name, None)
            else:
                current[pod.metadata.name] = pod
            if i >= self.listed - 1:
                yield at, kind, pod, dict(current)
