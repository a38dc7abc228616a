"""Every fault ends fully moved or fully back (issue 16): one fault per real `airflow dags test migrate_app` run,
probe on, placed at a step of the move; then the end state of the cluster and the report are checked, not only
the run's state (conftest.assert_end_state: placement, one DB primary, rows, no probe, no Pending pod, no lock).
"""
from __future__ import annotations

import time

import pytest
from kubernetes.client import CoreV1Api

from fault_support import (MIGRATE, STEPS, a_run_time, assert_end_state, assert_truthful, kill, lease_phase,
                            probe_pods, serving_db_instances)
from k8smove import lock
from k8smove.availability import rows_present
from kubesim_release import pods_by_component
from migration_support import clear_request_log, newest_report

pytestmark = pytest.mark.slow

ROLLBACK_TIMEOUT = {"timeout_seconds": 10}   # a move that cannot finish gives up after this, then rolls back


def migrate(dags_test, report_dir, **conf) -> tuple[int, dict, str]:
    result = dags_test("migrate_app", {**MIGRATE, **conf})
    return result.returncode, newest_report(report_dir), result.stdout


# ---- API errors (5xx, 429, timeouts) at each step -----------------------------------------------------------
# (id, step the fault waits for (None: from the start), api-error parameters, conf, the fault of the target,
#  expected outcome, where the release ends)
API_FAULTS = [
    ("plan-500", None, {"verb": "list", "resource": "nodes", "code": "500"}, {}, None, "refused", "node1"),
    # urllib3 (under the kubernetes client) retries a GET answered 429 with Retry-After by itself
    ("plan-429", None, {"verb": "list", "resource": "nodes", "code": "429", "count": 1}, {}, None, "moved",
     "node2"),
    ("begin-429", None, {"verb": "create", "resource": "coordination.k8s.io/leases", "code": "429", "count": 1},
     {}, None, "moved", "node2"),
    ("apply-500", "begin", {"verb": "patch", "resource": "apps/deployments", "code": "500", "count": 1}, {}, None,
     "moved", "node2"),
    ("wait-timeout", "wait", {"verb": "watch", "resource": "*", "code": "timeout", "seconds": 2, "count": 4}, {},
     None, "moved", "node2"),
    ("commit-500", "wait", {"verb": "update", "resource": "coordination.k8s.io/leases", "code": "500", "count": 1},
     {}, None, "moved", "node2"),
    ("commit-timeout", "wait", {"verb": "patch", "resource": "configmaps", "code": "timeout", "seconds": 3,
                                "count": 1}, {}, None, "moved", "node2"),
    ("rollback-500", "wait", {"verb": "patch", "resource": "apps/deployments", "code": "500", "count": 1},
     ROLLBACK_TIMEOUT, {"image": "kubesim-demo-app:*", "node": "node2"}, "rolled_back", "node1"),
]


@pytest.mark.parametrize("step, api_error, conf, never_ready, outcome, where",
                         [pytest.param(*case[1:], id=case[0]) for case in API_FAULTS])
def test_api_errors_at_each_step(cluster, kube_client, dags_test, report_dir, release, when,
                                 step, api_error, conf, never_ready, outcome, where):
    if never_ready:   # the move cannot finish: the rollback is the step under fault
        cluster.faults.add("image-never-ready", **never_ready)
    clear_request_log(cluster, kube_client)
    if step is None:
        cluster.faults.add("api-error", **api_error)
    else:
        watcher = when(lambda: STEPS[step](kube_client), lambda: cluster.faults.add("api-error", **api_error))
    code, report, stdout = migrate(dags_test, report_dir, **conf)
    cluster.faults.clear()
    if step is not None:
        assert watcher.acted_at is not None, f"the run never reached {step}"
    assert report["outcome"] == outcome, report
    assert (code == 0) == (outcome == "moved"), stdout[-3000:]
    if outcome == "refused":   # preflight: nothing written, not even the probe
        assert cluster.writes() == [], cluster.writes()
        assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
        assert lock.current(kube_client, "default", "demo") is None
        return
    assert_end_state(kube_client, report, release, where)
    if outcome == "moved":   # the retry finished the move: the struck attempt is in the step's try count
        assert report["steps"]["move"]["state"] == "success" and report["steps"]["rollback"]["state"] == "skipped"
    else:
        assert report["steps"]["rollback"]["state"] == "success", report["steps"]


# ---- the target node fails mid-move ---------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["not-ready", "deleted"])
def test_target_node_fails_mid_move(cluster, kube_client, dags_test, report_dir, release, when, failure):
    def fail_node():
        if failure == "not-ready":
            cluster.faults.add("node-not-ready", node="node2")
        else:
            CoreV1Api(kube_client).delete_node("node2")
    watcher = when(lambda: STEPS["wait"](kube_client), fail_node)
    code, report, stdout = migrate(dags_test, report_dir, **ROLLBACK_TIMEOUT)
    assert watcher.acted_at is not None and code != 0
    assert report["outcome"] == "rolled_back", report
    assert_end_state(kube_client, report, release, "node1")
    # what is still Terminating is on the dead node only: nothing there confirms its end
    assert {p.spec.node_name for p in CoreV1Api(kube_client).list_namespaced_pod("default").items
            if p.metadata.deletion_timestamp} <= {"node2"}


# ---- images and a DB that do not come up ----------------------------------------------------------------------
# (an App image that never gets Ready: tests/dags/test_migrate_failures.py::test_image_never_ready_on_target_rolls_back)
@pytest.mark.parametrize("fault, conf", [
    pytest.param({"kind": "image-pull-error", "image": "postgres:*", "node": "node2"}, {},
                 id="db-standby-never-starts"),
    pytest.param({"kind": "image-crash", "image": "postgres:*", "node": "node2"}, {"db_strategy": "recreate"},
                 id="db-stopped-never-comes-back-on-target"),
])
def test_what_never_starts_on_the_target_is_rolled_back(cluster, kube_client, dags_test, report_dir, release,
                                                        fault, conf):
    fault = dict(fault)
    cluster.faults.add(fault.pop("kind"), **fault)
    code, report, stdout = migrate(dags_test, report_dir, **ROLLBACK_TIMEOUT, **conf)
    assert code != 0 and report["outcome"] == "rolled_back", report
    assert "Rollout not complete after 10s" in report["reason"], report["reason"]
    assert_end_state(kube_client, report, release, "node1")


def test_a_db_that_comes_back_nowhere_is_reported_failed_and_keeps_its_rows(cluster, kube_client, dags_test,
                                                                            report_dir, release, when):
    """The DB is stopped for a recreate move and then crashes on every node: neither forward nor back. The run
    must say failed (never moved nor rolled back), keep the lock (its record is how the next run undoes the
    move) until it expires, and lose no acknowledged row once the DB can start again."""
    when(lambda: STEPS["begin"](kube_client), lambda: cluster.faults.add("image-crash", image="postgres:*"))
    code, report, stdout = migrate(dags_test, report_dir, db_strategy="recreate", **ROLLBACK_TIMEOUT)
    assert code != 0 and report["outcome"] == "failed", report
    assert "Rollback incomplete" in stdout and report["steps"]["rollback"]["state"] == "failed"
    assert_truthful(report)
    # the rows could not be read back, so stop_probe failed and kept its Pod (stopped) for a retry to read
    assert report["steps"]["stop_probe"]["state"] == "failed" and "cannot be checked" in \
        report["steps"]["stop_probe"]["error"]
    assert {p.status.phase for p in probe_pods(kube_client)} <= {"Succeeded", "Failed"}
    lease = lock.current(kube_client, "default", "demo")
    assert lease is not None and lease["spec"]["holderIdentity"].startswith("migrate_app/")
    assert lease["spec"]["leaseDurationSeconds"] == 10 + lock.LEASE_MARGIN_SECONDS
    cluster.faults.clear()   # the DB can start again: on the source, where the rollback put it
    rows = rows_present(release, deadline_seconds=60)
    assert len(rows) >= report["db"]["rows_present"] if report["db"] else len(rows) > 0
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    assert serving_db_instances(kube_client) == [0]


# ---- the Airflow process killed at each step, then the same run again ------------------------------------------
# step -> a fault that holds the run in that step long enough to be caught there (cleared before the run again)
HOLD_IN = {
    "start_probe": None,
    "begin": ("api-latency", {"verb": "patch", "resource": "apps/deployments", "seconds": 1.0}),
    "wait": ("slow-startup", {"node": "node2", "seconds": 4}),
    "commit": None,
    "rollback": ("image-never-ready", {"image": "kubesim-demo-app:*", "node": "node2"}),
}


@pytest.mark.parametrize("step", list(HOLD_IN))
def test_airflow_killed_at_each_step_then_the_same_run_again(cluster, kube_client, report_dir, release, when,
                                                             migrate_process, step):
    """SIGKILL to the process running the task (and the in-process triggerer), then the same run again (its tasks
    cleared, as a person does in the UI after a lost worker): it holds the same lock, so it finishes or undoes
    what the killed attempt left, and the release ends moved."""
    if HOLD_IN[step]:
        kind, params = HOLD_IN[step]
        cluster.faults.add(kind, **params)
    at = a_run_time()
    conf = {**MIGRATE, "timeout_seconds": 10 if step == "rollback" else 120}
    first = migrate_process(conf, at)
    watcher = when(lambda: STEPS[step](kube_client), lambda: kill(first))
    deadline = time.monotonic() + 200
    while first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert watcher.acted_at is not None, f"the run ended before {step}: {first.stdout.read()[-3000:]}"
    killed_in = lease_phase(kube_client)
    cluster.faults.clear()
    again = migrate_process(conf, at)
    output = again.communicate(timeout=280)[0]
    report = newest_report(report_dir)
    assert again.returncode == 0 and report["outcome"] == "moved", (killed_in, report, output[-3000:])
    assert_end_state(kube_client, report, release, "node2")
