"""Distributed Airflow (issue 12): the CeleryExecutor with a real Redis broker, PostgreSQL as metadata DB and two
Celery workers, each with its own AIRFLOW_HOME, working directory, TMPDIR and hostname, as if on two machines.
A task policy sends start_probe and stop_probe (and the other steps) to different workers' queues, so a move only
succeeds if nothing crosses tasks through a worker's processes, files or memory: deploy -> migrate -> maintenance,
each with 0 failed requests, 0 rows lost and a report readable from the shared report location."""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
from kubernetes.client import CoreV1Api

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from k8smove import lock, probe_pod  # noqa: E402
from kubesim_release import pods_by_component, unique_external_ip  # noqa: E402
from migration_support import assert_moved_without_disruption, pods_on  # noqa: E402
from scripts.airflow_stack import _group_alive, leftovers, start_stack  # noqa: E402
from waiting import wait_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUN_TIMEOUT = 240
# worker-a serves queue-a, worker-b queue-b, both the default queue: every step that hands something to a later
# one lands on the other worker
# (move may run on either: the crash test kills whichever runs it, and its retry must find the other)
QUEUES = {"preflight": "queue-a", "plan": "queue-a", "start_probe": "queue-a", "cordon": "queue-a",
          "move_releases": "queue-b", "stop_probe": "queue-b", "rollback": "queue-a",
          "rollback_releases": "queue-a", "report": "queue-a", "evict": "queue-a", "verify_nodes_empty": "queue-b"}
WORKERS = {"worker-a": ("queue-a", "default"), "worker-b": ("queue-b", "default")}
# A lost worker's task is failed by the scheduler once its heartbeat is this old (Airflow's default: 300 s)
LOST_WORKER = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
               "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
               # every move defers: a resumed task is where a distributed executor hands work to another machine
               "AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS": "0"}


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, cluster):
    home = tmp_path_factory.mktemp("airflow-celery")
    stack = start_stack(home, cluster.kubeconfig_path, dag_ids=("deploy_app", "migrate_app", "node_maintenance"),
                        executor="celery", workers=WORKERS, queues=QUEUES, extra=LOST_WORKER)
    try:
        yield stack
    finally:
        stack.stop()
        assert not any(_group_alive(p.pid) for p in stack.processes.values())
        assert leftovers(stack) == [], leftovers(stack)


def start_run(stack, dag_id: str, conf: dict) -> str:
    run_id = f"celery__{uuid.uuid4().hex[:12]}"
    response = stack.post(f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf})
    assert response.status_code == 200, response.text
    return run_id


def trigger(stack, dag_id: str, conf: dict) -> tuple[str, dict]:
    run_id = start_run(stack, dag_id, conf)
    run = stack.wait_for_run(dag_id, run_id, RUN_TIMEOUT)
    assert run["state"] == "success", (stack.task_states(dag_id, run_id), stack.logs_tail())
    return run_id, stack.task_instances(dag_id, run_id)


def hostnames(task_instances: dict) -> dict[str, str]:
    return {task: ti["hostname"] for task, ti in task_instances.items() if ti["state"] == "success"}


def no_probe_pods(kube_client) -> bool:
    return not CoreV1Api(kube_client).list_namespaced_pod(
        "default", label_selector=f"{probe_pod.LABEL_PROBE_OF}=demo").items


def test_deploy_migrate_and_maintenance_with_each_step_on_another_worker(cluster, kube_client, airflow_stack):
    stack = airflow_stack
    assert stack.env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    conf = {"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
            "node_label": {"demo": "node1"}, "external_ip": unique_external_ip(), "port": 8080}
    _, deployed = trigger(stack, "deploy_app", conf)
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}

    run_id, migrated = trigger(stack, "migrate_app", {"node_label": {"demo": "node2"}})
    ran_on = hostnames(migrated)
    assert ran_on["start_probe"] == "worker-a" and ran_on["stop_probe"] == "worker-b", ran_on
    assert ran_on["report"] == "worker-a", ran_on
    assert set(hostnames(deployed).values()) | set(ran_on.values()) == {"worker-a", "worker-b"}
    report = json.loads((stack.report_dir / f"migrate_app__{run_id}.json").read_text())
    assert_moved_without_disruption(report, "node1", "node2")
    assert report["db_switchover"] and report["probe"]["writes"]["failed"] == 0, report
    assert no_probe_pods(kube_client)

    # node2 goes into maintenance; the release moves back to demo=node1 as a whole
    CoreV1Api(kube_client).patch_node("node2", {"metadata": {"labels": {"maintenance": "scheduled"}}})
    run_id, maintained = trigger(stack, "node_maintenance", {"target_selector": {"demo": "node1"}})
    ran_on = hostnames(maintained)
    assert ran_on["start_probe"] == "worker-a" and ran_on["stop_probe"] == "worker-b", ran_on
    assert ran_on["move_releases"] == "worker-b", ran_on
    assert pods_on(kube_client, "node2") == []
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    report = json.loads((stack.report_dir / f"node_maintenance__{run_id}.json").read_text())
    assert report["outcome"] == "done", report
    release = report["releases"]["default/demo"]
    assert release["outcome"] == "moved", release
    assert release["probe"]["sent"] >= 20 and release["probe"]["failed"] == 0, release["probe"]
    assert release["db"]["rows_acknowledged"] > 0 and release["db"]["rows_lost"] == 0, release["db"]
    assert lock.current(kube_client, "default", "demo") is None
    assert no_probe_pods(kube_client)


def test_a_worker_lost_in_the_middle_of_a_move_leaves_the_retry_on_the_other_worker_to_finish_it(
        cluster, kube_client, airflow_stack):
    """The worker that resumed ``move`` after its deferral (the switchover: fence, promote, switch) is killed
    with its whole process group; the scheduler fails the lost try, the retry runs on the other worker and
    finishes the move from the phase the lock recorded. No probe is left anywhere: it is a Pod, removed by
    stop_probe."""
    stack = airflow_stack
    CoreV1Api(kube_client).patch_node("node2", {"spec": {"unschedulable": False},
                                                "metadata": {"labels": {"maintenance": None}}})
    run_id = start_run(stack, "migrate_app", {"node_label": {"demo": "node2"}})
    resumed = wait_for(lambda: stack.task_events("migrate_app", run_id, "move")[:3] == [
        ("running", 1), ("deferred", 1), ("running", 1)], 120, 0.05, "move resumed after its deferral")
    assert resumed
    lost = stack.task_instances("migrate_app", run_id)["move"]["hostname"]
    assert lost in WORKERS
    stack.kill(lost)
    survivor = next(name for name in WORKERS if name != lost)
    move = wait_for(lambda: (ti := stack.task_instances("migrate_app", run_id)["move"])["state"] == "success" and ti,
                    RUN_TIMEOUT, 0.5, "the move's retry")
    assert move["try_number"] == 2 and move["hostname"] == survivor, move
    # the lost machine is replaced: its queue's later tasks (stop_probe or report) run there
    stack.restart(lost)
    run = stack.wait_for_run("migrate_app", run_id, RUN_TIMEOUT)
    # fully moved, exactly one DB instance, every acknowledged row there
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    assert lock.current(kube_client, "default", "demo") is None
    report = json.loads((stack.report_dir / f"migrate_app__{run_id}.json").read_text())
    assert report["db"]["rows_acknowledged"] > 0 and report["db"]["rows_lost"] == 0, report["db"]
    assert report["probe"]["failed"] == 0, report["probe"]
    # the writes that waited for the lost worker's switchover are reported, not hidden: moved or disrupted
    assert (run["state"], report["outcome"]) in (("success", "moved"), ("failed", "disrupted")), report
    assert no_probe_pods(kube_client)
