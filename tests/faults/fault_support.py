"""What the fault-injection tests share: where a run is (what the cluster shows of each step), a watcher that
acts when a step shows, killing an Airflow process, and the end state a fault must leave."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone

from kubernetes.client import AppsV1Api, CoreV1Api

from k8smove import lock, switchover
from k8smove.availability import rows_present
from k8smove.probe_pod import LABEL_PROBE_OF
from k8smove.verify import verify_endpoint
from kubesim_release import pods_by_component

MIGRATE = {"node_label": {"demo": "node2"}}
POLL_SECONDS = 0.05


# ---- where a run is: what the cluster shows of each step ---------------------------------------------------
def lease_phase(kube_client) -> str | None:
    """The move record's phase on the release's Lease (applying, applied, fencing, promoted, switched,
    rolling_back); None without a lock."""
    lease = lock.current(kube_client, "default", "demo")
    return lock.record_of(lease).get("phase", "locked") if lease else None


def probe_pods(kube_client) -> list:
    return CoreV1Api(kube_client).list_namespaced_pod("default", label_selector=f"{LABEL_PROBE_OF}=demo").items


def release_pods_on(kube_client, node: str) -> list:
    return [p for p in CoreV1Api(kube_client).list_namespaced_pod(
        "default", label_selector="app.kubernetes.io/instance=demo").items if p.spec.node_name == node]


STEPS = {
    # step -> what the cluster shows while the run is in it
    "start_probe": lambda k: any(p.status.phase == "Running" for p in probe_pods(k)) and lease_phase(k) is None,
    "begin": lambda k: lease_phase(k) == "applying",
    "wait": lambda k: lease_phase(k) == "applied" and bool(release_pods_on(k, "node2")),
    "commit": lambda k: lease_phase(k) in ("fencing", "promoted", "switched"),
    "rollback": lambda k: lease_phase(k) == "rolling_back",
}


class When(threading.Thread):
    """Run ``act`` once, as soon as ``condition`` holds (polled through the test's own client)."""

    def __init__(self, condition, act, timeout: float = 240):
        super().__init__(daemon=True)
        self.condition, self.act, self.deadline = condition, act, time.monotonic() + timeout
        self.acted_at: float | None = None
        self.error: BaseException | None = None
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                if self.condition():
                    self.acted_at = time.monotonic()   # before acting: a killed run may be seen ended first
                    self.act()
                    return
            except Exception as error:   # an API answer during a fault: look again
                self.error = error
            time.sleep(POLL_SECONDS)

    def finish(self) -> None:
        self.stopped.set()
        self.join(5)


def a_run_time() -> str:
    """A run_after (and logical date) no other run of this session has: it names the run."""
    return datetime.now(timezone.utc).isoformat()


def kill(process: subprocess.Popen) -> None:
    """The Airflow process and every child (the task runs in it, the triggerer too) die without a word."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


# ---- the end state -------------------------------------------------------------------------------------------
def serving_db_instances(kube_client) -> list[int]:
    return sorted(int(d.metadata.labels[switchover.LABEL_DB_INSTANCE]) for d in AppsV1Api(kube_client)
                  .list_namespaced_deployment("default", label_selector="app.kubernetes.io/instance=demo,"
                                                                        "app.kubernetes.io/component=db").items
                  if d.spec.replicas)


def assert_end_state(kube_client, report: dict, url: str, where: str) -> None:
    """Fully on ``where``, one DB primary behind the DB Service, every acknowledged row there, nothing the run
    started left behind, and a report that does not claim more than the probe saw."""
    assert pods_by_component(kube_client) == {"app": [where], "db": [where]}, report
    instances = serving_db_instances(kube_client)
    assert len(instances) == 1, instances
    assert switchover.service_switched(kube_client, "default", "demo", instances[0]), instances
    switchover.check_primary(kube_client, "default", "demo", instances[0])   # read-write, not in recovery
    assert verify_endpoint(url, deadline_seconds=30)["body"]["node"] == where
    db = report["db"]
    assert db is not None and db["rows_acknowledged"] > 0 and db["rows_lost"] == 0, report
    assert len(rows_present(url)) >= db["rows_present"]
    assert probe_pods(kube_client) == [], [p.metadata.name for p in probe_pods(kube_client)]
    pods = CoreV1Api(kube_client).list_namespaced_pod("default").items
    # (a pod being deleted is going: on a dead node it stays Terminating until the node is back or removed)
    assert [p.metadata.name for p in pods if p.status.phase == "Pending" and not p.metadata.deletion_timestamp] == []
    assert not [d.metadata.name for d in AppsV1Api(kube_client).list_namespaced_deployment("default").items
                if "NotIn" in json.dumps(kube_client.sanitize_for_serialization(d.spec.template.spec.affinity))]
    lease = lock.current(kube_client, "default", "demo")
    assert lease is None, (lease["spec"], lock.record_of(lease).get("phase"))
    assert_truthful(report)


def assert_truthful(report: dict) -> None:
    """`moved` only with every request and write answered and every row read back."""
    probe = report["probe"] or {}
    if report["outcome"] == "moved":
        assert probe.get("failed") == 0 and probe["writes"]["failed"] == 0, report
        assert report["db"]["rows_lost"] == 0, report
