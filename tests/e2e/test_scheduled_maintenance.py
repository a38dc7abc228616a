"""node_maintenance fired by the REAL scheduler on its cron: no trigger, no conf.

The stack of this module (tests/e2e/conftest.py) starts with ``K8SMOVE_MAINTENANCE_SCHEDULE`` set to every
minute, through the ``airflow_extra_env`` override below; the dag-processor reads it when it parses the DAG.
node1 is marked ``maintenance=scheduled`` with a managed web Deployment on it BEFORE the components start, and
the Service in front of it is probed from then on: with catchup=False the scheduler's first run of
node_maintenance is the one that must evacuate node1, and no earlier run can have planned against a half-built
cluster. The test then waits (bounded) for that scheduled run over the REST API v2 and checks the cluster.
"""
from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from kubernetes.client import CoreV1Api

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from k8smove.verify import verify_endpoint  # noqa: E402
from test_node_maintenance import Probes, create_deployment, expose, pods_on, start_on_node1  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]   # includes starting and stopping the components

DAG_ID = "node_maintenance"
SCHEDULE = "* * * * *"
APP = "web-scheduled"
RUN_TIMEOUT = 150          # from the stack being up: the first tick (<= 60 s) plus the run itself
REGISTER_TIMEOUT = 60
QUIESCE_TIMEOUT = 60


@pytest.fixture(scope="module")
def marked_node1(cluster, kube_client):
    """node1 marked for maintenance with a managed single-replica web Deployment on it behind a Service, probed
    at 20 GET/s until the module ends (the test stops the probe once the run is over). Module-scoped and
    requested by ``airflow_extra_env``, so all of it is in place before any Airflow component starts."""
    urls = []

    def create():
        create_deployment(kube_client, APP, 1)         # managed-by=k8smove, image nginx, readiness probe
        urls.append(expose(kube_client, APP))           # externalIPs: a loopback address of its own
    start_on_node1(kube_client, create)
    assert pods_on(kube_client, "node1") and pods_on(kube_client, "node2") == []
    # Serving through the Service before the probe starts: the pod's Ready reaches the Service's endpoints
    # (and its listener) a moment after the pod itself.
    assert verify_endpoint(urls[0], deadline_seconds=20)["body"]["node"] == "node1"
    with Probes(urls) as probes:
        yield urls[0], probes


@pytest.fixture(scope="module")
def airflow_extra_env(marked_node1):
    return {"K8SMOVE_MAINTENANCE_SCHEDULE": SCHEDULE}


@pytest.fixture
def scheduled_stack(airflow_stack):
    """The stack; afterwards the DAG is paused and no task of it is left running/queued/deferred (bounded), so
    the components stop cleanly: with a run every minute a task would otherwise be mid-run when the api-server
    stops, and retry the execution API past the stack's 30 s grace period."""
    yield airflow_stack
    response = httpx.patch(f"{airflow_stack.api}/dags/{DAG_ID}", json={"is_paused": True}, timeout=30)
    assert response.status_code == 200 and response.json()["is_paused"], response.text
    deadline = time.monotonic() + QUIESCE_TIMEOUT
    while True:
        response = airflow_stack.get(f"/dags/{DAG_ID}/dagRuns/~/taskInstances",
                                     params=[("state", s) for s in ("running", "queued", "deferred")])
        assert response.status_code == 200, response.text
        busy = response.json()["task_instances"]
        if not busy:
            return
        assert time.monotonic() < deadline, f"still busy after {QUIESCE_TIMEOUT}s: {busy}"
        time.sleep(1)


def longest_gap(record) -> tuple[float, float]:
    """(from, to) in seconds since the probe started, of the longest time without a successful answer: where
    failed requests were, for the failure message."""
    with record.lock:
        edges = [record.started, *sorted(done for _, done in record.successes)]
    start, end = max(zip(edges, edges[1:]), key=lambda gap: gap[1] - gap[0], default=(record.started,) * 2)
    return round(start - record.started, 2), round(end - record.started, 2)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def app_pods(kube_client) -> list[tuple[str, bool]]:
    """(node, Ready) of each of the app's pods that is not terminating."""
    return sorted((p.spec.node_name, any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []))
                  for p in CoreV1Api(kube_client).list_namespaced_pod("default", label_selector=f"app={APP}").items
                  if p.metadata.deletion_timestamp is None)


def wait_registered(stack) -> dict:
    deadline = time.monotonic() + REGISTER_TIMEOUT
    while True:
        stack.check_alive()
        response = stack.get(f"/dags/{DAG_ID}")
        if response.status_code == 200:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"{DAG_ID} not registered after {REGISTER_TIMEOUT}s: {response.text}\n"
                                 f"{stack.logs_tail()}")
        time.sleep(1)


def runs(stack) -> list[dict]:
    response = stack.get(f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["dag_runs"]


def first_run_finished(stack, timeout: float) -> dict:
    """The DAG's first run (by logical date), once it is success/failed."""
    deadline = time.monotonic() + timeout
    while True:
        stack.check_alive()
        found = sorted(runs(stack), key=lambda r: r["logical_date"] or r["run_after"])
        if found and found[0]["state"] in ("success", "failed"):
            return found[0]
        if time.monotonic() > deadline:
            states = stack.task_states(DAG_ID, quote(found[0]["dag_run_id"], safe="")) if found else {}
            raise AssertionError(f"no finished {DAG_ID} run after {timeout}s: {found}\n{states}\n"
                                 f"{stack.logs_tail()}")
        time.sleep(2)


def test_scheduled_run_evacuates_the_marked_node_without_a_failed_request(cluster, kube_client, marked_node1,
                                                                          scheduled_stack):
    airflow_stack = scheduled_stack
    url, probes = marked_node1
    dag = wait_registered(airflow_stack)
    assert dag["timetable_summary"] == SCHEDULE and not dag["is_paused"], dag

    try:
        run = first_run_finished(airflow_stack, RUN_TIMEOUT)
    finally:
        probes.stop.set()
        for thread in probes.threads:
            thread.join()
    probed = probes.records[url].summary(time.monotonic())
    probed["longest_gap_s"] = longest_gap(probes.records[url])
    run_id = run["dag_run_id"]
    path = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances"
    response = airflow_stack.get(path, params={"limit": 100})
    assert response.status_code == 200, response.text
    tis = response.json()["task_instances"]
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in tis}
    assert run["state"] == "success", (run, states, airflow_stack.logs_tail())
    # Fired by the scheduler on the env's cron, not triggered: a scheduled run, without conf.
    assert run["run_type"] == "scheduled" and run_id.startswith("scheduled__"), run
    assert not run["conf"], run
    assert all(r["run_type"] == "scheduled" for r in runs(airflow_stack))
    assert parse_time(run["start_date"]) >= parse_time(run["logical_date"]), run

    # Every task ran; `move` as a mapped task: one instance, map index 0, for the one managed Deployment.
    moves = [ti for ti in tis if ti["task_id"] == "move"]
    assert [(ti["map_index"], ti["state"], ti["rendered_map_index"]) for ti in moves] == [
        (0, "success", f"Deployment default/{APP}")], moves
    assert {task_id: state for (task_id, _), state in states.items()} == {
        **{task_id: "success" for task_id in ("within_window", "plan", "stop_if_dry_run", "cordon", "start_probe",
                                              "move_releases", "stop_probe", "move", "evict", "verify_nodes_empty",
                                              "mark_ready", "report")},
        "rollback_releases": "skipped"}, states
    # The move's rollout was done within the worker's wait ([k8smove] wait_in_worker_seconds, 15 s): no deferral,
    # no triggerer round trip, one try (tests/e2e/test_scheduler.py covers the deferred path).
    assert airflow_stack.task_events(DAG_ID, run_id, "move") == [("running", 1), ("success", 1)]

    # Not one request failed while the run moved the app, probed at 20/s from before Airflow started: the
    # answers came from node1 first, from node2 last.
    assert probed["sent"] >= 20 and probed["failed"] == 0, f"{probed}\nmove: {moves}"
    assert probed["sent"] >= 20 * 0.8 * probed["duration_s"], f"{probed}"
    nodes = [placement["node"] for placement in probed["placements"]]
    assert nodes[0] == "node1" and nodes[-1] == "node2", f"{probed}"

    assert pods_on(kube_client, "node1") == []
    assert app_pods(kube_client) == [("node2", True)]
    node1 = CoreV1Api(kube_client).read_node("node1")
    assert node1.spec.unschedulable and node1.metadata.labels["maintenance"] == "ready"
    assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node2"
