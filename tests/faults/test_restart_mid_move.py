"""kubesim restarted mid-move (issue 16, item 2), on the real control plane with kubesim's kubelets as the nodes, in
its two meaningful forms:

* the control plane: kube-apiserver, or etcd, killed (SIGKILL) and started again on the same ports and data
  (ControlPlane.restart) while a real `airflow dags test migrate_app` moves the release: every client gets
  connection refused (or, with etcd down, the API server's errors) for some seconds and every watch breaks;
* a node's kubelet process restarted (RealNodes.restart_kubelet): as on a real node, the pods' processes are the
  runtime's and run on; the new kubelet re-registers and adopts them (same containers, no restart).

Each case runs with the probe on and a fault placed at a step by a watcher, and checks the end state, not only the
run's state (fault_support.assert_end_state: placement, one DB primary, rows, no probe, no Pending pod, no exclusion,
no lock, a truthful report), plus every row the App held before the run still there.

The `cluster` here has a control plane of its own (not the session's shared one of tests/conftest.py): restarting it
must not disturb other tests.
"""
from __future__ import annotations

import json
import time
import urllib.request

import pytest
from kubernetes.client import CoreV1Api

from fault_support import MIGRATE, STEPS, assert_end_state
from k8smove.availability import rows_present
from migration_support import newest_report

pytestmark = pytest.mark.slow

DOWN_SECONDS = 3.0   # between the kill and the start again: connection refused all that time, and the start-up
MOVE_TIMEOUT_SECONDS = 120   # a wait the restart left stuck ends (and says why) well within the test's timeout


@pytest.fixture
def cluster(tmp_path):
    """Two kubesim nodes on a real control plane of this test's own (tests/faults/conftest.py's `release`,
    `dags_test` and `when` then use it)."""
    from kubesim.cluster import Cluster

    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0, heartbeat_seconds=1.0,
                 control_plane="real", work_dir=str(tmp_path / "kubesim"),
                 kubeconfig_path=str(tmp_path / "kubeconfig")) as c:
        yield c


def containers_on(kube_client, node: str) -> dict[str, tuple]:
    """The pods running on ``node`` (the release's, the probe): uid -> each container's (containerID, restartCount)."""
    return {p.metadata.uid: tuple((cs.container_id, cs.restart_count) for cs in p.status.container_statuses or ())
            for p in CoreV1Api(kube_client).list_namespaced_pod("default").items
            if p.spec.node_name == node and p.status.phase == "Running" and not p.metadata.deletion_timestamp}


def write_rows(url: str, count: int) -> set[int]:
    """``count`` rows written through the App (POST /rows, as the probe writes); their ids."""
    ids = set()
    for n in range(count):
        request = urllib.request.Request(url.rstrip("/") + "/rows", data=json.dumps({"value": f"before-{n}"}).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            ids.add(int(json.loads(response.read())["id"]))
    return ids


# fault_support's steps, and the rollout wait once a pod runs on the target (one a kubelet restart could kill)
AT = {**STEPS, "wait, a target pod running": lambda k: STEPS["wait"](k) and bool(containers_on(k, "node2"))}

# (id, step the restart waits for, what restarts)
RESTARTS = [
    ("apiserver-in-rollout-wait", "wait", "kube-apiserver"),
    ("apiserver-in-db-switchover", "commit", "kube-apiserver"),
    ("etcd-in-rollout-wait", "wait", "etcd"),
    ("target-kubelet-in-rollout-wait", "wait, a target pod running", "kubelet:node2"),
    ("source-kubelet-in-db-switchover", "commit", "kubelet:node1"),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("step, component", [pytest.param(*case[1:], id=case[0]) for case in RESTARTS])
def test_restart_mid_move_ends_moved(cluster, kube_client, dags_test, report_dir, release, when, step, component):
    """A restart is a transient outage: the run rides it out (API calls retried, watches resumed) and the release
    ends moved, with a report that does not claim more than the probe saw."""
    rows_before = write_rows(release, 5)
    seen: dict = {}

    def restart():
        try:
            if component.startswith("kubelet:"):
                node = component.split(":", 1)[1]
                seen["before"] = containers_on(kube_client, node)
                t0 = time.monotonic()
                cluster.nodes.restart_kubelet(node, down_seconds=DOWN_SECONDS)
                seen["seconds"] = time.monotonic() - t0
                seen["after"] = containers_on(kube_client, node)
            else:
                seen["seconds"] = cluster.control_plane.restart(component, down_seconds=DOWN_SECONDS)
        except Exception as error:   # said in the assertion below, not retried by the watcher
            seen["error"] = repr(error)

    watcher = when(lambda: AT[step](kube_client), restart)
    t0 = time.monotonic()
    result = dags_test("migrate_app", {**MIGRATE, "timeout_seconds": MOVE_TIMEOUT_SECONDS})
    run_seconds = time.monotonic() - t0
    (report_dir / "run.log").write_text(result.stdout)   # for a look afterwards
    report = newest_report(report_dir)
    assert watcher.acted_at is not None, f"the run never reached {step}"
    assert "error" not in seen and "seconds" in seen, seen
    probe = report["probe"] or {}
    print(f"{component} restarted at {step} ({seen['seconds']:.1f} s down and back): run "
          f"{'success' if result.returncode == 0 else 'failed'} in {run_seconds:.0f} s, outcome {report['outcome']}, "
          f"failed requests {probe.get('failed')}, failed writes {(probe.get('writes') or {}).get('failed')}, "
          f"rows acknowledged {(report['db'] or {}).get('rows_acknowledged')}, lost {(report['db'] or {}).get('rows_lost')}; "
          f"watches resumed {result.stdout.count('watch interrupted')}, "
          f"connection errors retried {result.stdout.count('Retrying (Retry(')}, failed tries {result.stdout.count('new_state=up_for_retry')}")
    assert report["outcome"] == "moved" and result.returncode == 0, (report, result.stdout[-3000:])
    assert_end_state(kube_client, report, release, "node2")
    assert rows_before <= set(rows_present(release)), "rows the App held before the move are gone"
    if component.startswith("kubelet:"):
        # the pods the restarted kubelet ran and still runs kept their containers: nothing was restarted
        kept = seen["before"].keys() & seen["after"].keys()
        assert kept and all(seen["after"][uid] == seen["before"][uid] for uid in kept), seen
