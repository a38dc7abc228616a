"""deploy_app then migrate_app through the REAL scheduler path: runs triggered by the CLI and the REST API v2,
scheduled by the scheduler, executed by the LocalExecutor, WaitReady deferred to the triggerer.
The components (tests/e2e/conftest.py) start once per module."""
from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from k8smove.verify import verify_endpoint  # noqa: E402
from kubesim_release import pods_by_component, unique_external_ip  # noqa: E402
from migration_support import assert_moved_without_disruption, clear_request_log, generations, pods_on  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]   # the first test also starts the components

RUN_TIMEOUT = 150


@pytest.fixture(scope="module")
def airflow_extra_env() -> dict[str, str]:
    """Every rollout wait defers at once, so this module proves the triggerer's path (the default waits 15 s in
    the worker first: tests/e2e/test_scheduled_maintenance.py)."""
    return {"AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS": "0"}


def run_id(prefix: str) -> str:
    return f"{prefix}__{uuid.uuid4().hex[:12]}"


def test_deploy_by_cli_then_migrate_by_rest_api(cluster, kube_client, airflow_stack):
    conf = {"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
            "node_label": {"demo": "node1"}, "external_ip": unique_external_ip(), "port": 8080}
    url = f"http://{conf['external_ip']}:8080/"

    # deploy_app: triggered from the CLI, run by the scheduler.
    deploy_run = run_id("cli_deploy")
    triggered = airflow_stack.cli("dags", "trigger", "deploy_app", "--run-id", deploy_run,
                                  "--conf", json.dumps(conf), "--output", "json")
    assert triggered.returncode == 0, triggered.stdout[-5000:]
    assert deploy_run in triggered.stdout, triggered.stdout[-5000:]
    run = airflow_stack.wait_for_run("deploy_app", deploy_run, RUN_TIMEOUT)
    states = airflow_stack.task_states("deploy_app", deploy_run)
    assert run["state"] == "success", (states, airflow_stack.logs_tail())
    assert run["run_type"] == "manual" and run["conf"] == conf
    assert states == {"preflight": "success", "label_nodes": "success", "start_probe": "success", "move": "success",
                      "rollback": "skipped", "stop_probe": "success", "report": "success"}, states
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node1"

    # migrate_app: triggered through the REST API v2.
    migrate_run = run_id("api_migrate")
    response = airflow_stack.post("/dags/migrate_app/dagRuns", {
        "dag_run_id": migrate_run, "logical_date": None, "conf": {"node_label": {"demo": "node2"}}})
    assert response.status_code == 200, response.text
    assert response.json()["dag_run_id"] == migrate_run
    run = airflow_stack.wait_for_run("migrate_app", migrate_run, RUN_TIMEOUT)
    states = airflow_stack.task_states("migrate_app", migrate_run)
    assert run["state"] == "success", (states, airflow_stack.logs_tail())
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    assert pods_on(kube_client, "node1") == []
    assert verify_endpoint(url, deadline_seconds=20)["body"]["node"] == "node2"

    report_path = airflow_stack.report_dir / f"migrate_app__{migrate_run}.json"
    assert report_path.exists(), sorted(airflow_stack.report_dir.glob("*"))
    report = json.loads(report_path.read_text())
    assert_moved_without_disruption(report, "node1", "node2")
    assert report["probe"]["failed"] == 0 and report["db"]["rows_lost"] == 0

    # The run's "Migration report" tab (plugins/report_view.py): the plugin is registered on the api-server with a
    # view on DAG runs, and its page draws the run from its report XCom
    plugins = airflow_stack.get("/plugins").json()["plugins"]
    [view] = [v for p in plugins if p["name"] == "k8smove_reports" for v in p["external_views"]]
    assert (view["name"], view["destination"], view["href"]) == (
        "Migration report", "dag_run", "/k8smove/runs/{DAG_ID}/{RUN_ID}")
    page = httpx.get(f"http://127.0.0.1:{airflow_stack.port}/k8smove/runs/migrate_app/{migrate_run}", timeout=30)
    assert page.status_code == 200, page.text
    assert '<span class="outcome good">moved</span>' in page.text
    assert re.findall(r'class="step" data-task="(\w+)" data-state="success"', page.text) == [
        "preflight", "start_probe", "move", "stop_probe"]
    answered_by = re.findall(r'class="node" data-node="(\w+)"', page.text)
    assert answered_by[0] == "node1" and answered_by[-1] == "node2", answered_by
    assert 'class="read-failed"' not in page.text and page.text.count('class="read-ok"') >= 10
    missing = httpx.get(f"http://127.0.0.1:{airflow_stack.port}/k8smove/runs/migrate_app/no-such-run", timeout=30)
    assert missing.status_code == 404 and "has no migration report" in missing.text

    # The move's wait really deferred to the triggerer, for both DAGs: the audit log shows the try going
    # running -> deferred -> running -> success (a deferral is not a retry: one try); the task log, as the
    # REST API serves it, merges the worker's log with the log file the TRIGGERER process (its job id is in the
    # file name) wrote for this trigger, in which the trigger fires its success event.
    triggerer_jobs = airflow_stack.job_ids("TriggererJob")
    assert triggerer_jobs, airflow_stack.get("/jobs").text
    for dag_id, dag_run in (("deploy_app", deploy_run), ("migrate_app", migrate_run)):
        ti = airflow_stack.task_instances(dag_id, dag_run)["move"]
        assert ti["state"] == "success" and ti["try_number"] == 1, ti
        assert airflow_stack.task_events(dag_id, dag_run, "move") == [
            ("running", 1), ("deferred", 1), ("running", 1), ("success", 1)]

        log = airflow_stack.task_log(dag_id, dag_run, "move")
        events = [entry["event"] for entry in log]
        trigger_files = [e for e in events if re.search(r"/task_id=move/attempt=1\.log\.trigger\.\d+\.log$", e)]
        assert len(trigger_files) == 1, events[:10]
        assert int(trigger_files[0].rsplit(".", 2)[-2]) in triggerer_jobs, (trigger_files, triggerer_jobs)
        fired = [entry for entry in log if entry["event"] == "Trigger fired event"]
        assert len(fired) == 1 and "'status': 'success'" in fired[0]["result"], fired
        moved = next(i for i, e in enumerate(events) if e.startswith("default/demo: moved; "))
        assert events.index("Pausing task as DEFERRED. ") < events.index("Trigger fired event") < moved, events

    # Two runs moving the same release at once: the release's lock lets one move it; the other is refused with
    # the holder's name, or (if it came second) finds the release already there.
    racing = [run_id(f"race{i}") for i in range(2)]
    for racer in racing:
        response = airflow_stack.post("/dags/migrate_app/dagRuns", {
            "dag_run_id": racer, "logical_date": None, "conf": {"node_label": {"demo": "node1"}}})
        assert response.status_code == 200, response.text
    reports = {}
    for racer in racing:
        airflow_stack.wait_for_run("migrate_app", racer, RUN_TIMEOUT)
        reports[racer] = json.loads((airflow_stack.report_dir / f"migrate_app__{racer}.json").read_text())
    outcomes = sorted(r["outcome"] for r in reports.values())
    assert outcomes in (["moved", "refused"], ["moved", "unchanged"]), {k: (r["outcome"], r["reason"])
                                                                       for k, r in reports.items()}
    for racer, report in reports.items():
        if report["outcome"] == "refused":
            [winner] = [r for r in racing if r != racer]
            assert f"is being moved by migrate_app/{winner}" in report["reason"], report["reason"]
        assert report["probe"]["failed"] == 0 and report["db"]["rows_lost"] == 0, report
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}


def test_a_finished_move_cleared_and_run_again_by_the_scheduler_changes_nothing(cluster, kube_client, airflow_stack):
    """Every task of a migrate_app run executed a second time, by the scheduler (what a retry after Airflow failed
    a resumed task, apache/airflow#71580, or a lost worker does): the release stays where the first run put it, no
    Deployment is written, nothing is left behind, and the report gives the run's result again."""
    from kubernetes.client import CoreV1Api

    from k8smove import lock

    conf = {"release": "again", "label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
            "node_label": {"demo": "node1"}, "external_ip": unique_external_ip(), "port": 8080}
    deploy_run = run_id("again_deploy")
    assert airflow_stack.post("/dags/deploy_app/dagRuns", {"dag_run_id": deploy_run, "logical_date": None,
                                                            "conf": conf}).status_code == 200
    assert airflow_stack.wait_for_run("deploy_app", deploy_run, RUN_TIMEOUT)["state"] == "success"
    migrate_run = run_id("again_migrate")
    assert airflow_stack.post("/dags/migrate_app/dagRuns", {"dag_run_id": migrate_run, "logical_date": None, "conf": {
        "release": "again", "node_label": {"demo": "node2"}}}).status_code == 200
    assert airflow_stack.wait_for_run("migrate_app", migrate_run, RUN_TIMEOUT)["state"] == "success"
    report_path = airflow_stack.report_dir / f"migrate_app__{migrate_run}.json"
    first = json.loads(report_path.read_text())
    assert first["outcome"] == "moved", first
    placed, written = pods_by_component(kube_client, "again"), generations(kube_client)

    cleared = airflow_stack.post(f"/dags/migrate_app/dagRuns/{migrate_run}/clear", {"dry_run": False})
    assert cleared.status_code == 200, cleared.text
    run = airflow_stack.wait_for_run("migrate_app", migrate_run, RUN_TIMEOUT)
    tis = airflow_stack.task_instances("migrate_app", migrate_run)
    assert run["state"] == "success", ({t: ti["state"] for t, ti in tis.items()}, airflow_stack.logs_tail())
    # each ran again (move once more if Airflow's deferral race failed a resumed try: it retries)
    tries = {t: ti["try_number"] for t, ti in tis.items() if ti["state"] != "skipped"}
    assert set(tries) == {"preflight", "start_probe", "move", "stop_probe", "report"}, tis
    assert all(n == 2 for t, n in tries.items() if t != "move") and tries["move"] >= 2, tries
    # the run's result again: its move was committed by the first execution (the mark on the release record)
    second = json.loads(report_path.read_text())
    assert second["outcome"] == "moved" and second["db_switchover"] == first["db_switchover"], (
        second["outcome"], second["reason"])
    assert second["probe"]["failed"] == 0 and second["db"]["rows_lost"] == 0, second
    assert pods_by_component(kube_client, "again") == placed == {"app": ["node2"], "db": ["node2"]}
    assert generations(kube_client) == written          # not one Deployment written by the second run
    assert lock.current(kube_client, "default", "again") is None
    probes = CoreV1Api(kube_client).list_namespaced_pod("default", label_selector="k8smove.io/probe-of=again").items
    assert [p.metadata.name for p in probes] == []


@pytest.mark.parametrize("conf,message", [
    ({"port": 70000}, "Invalid input for param port: 70000 is greater than the maximum of 65535"),
    ({"external_ip": "10.0.0.300"}, "Invalid input for param external_ip: '10.0.0.300' is not a 'ipv4'"),
], ids=["port", "external_ip"])
def test_invalid_conf_is_refused_by_cli_and_rest_api_before_any_write(cluster, kube_client, airflow_stack,
                                                                      conf, message):
    runs_before = airflow_stack.get("/dags/deploy_app/dagRuns").json()["total_entries"]
    clear_request_log(cluster, kube_client)

    by_cli = airflow_stack.cli("dags", "trigger", "deploy_app", "--conf", json.dumps(conf))
    assert by_cli.returncode != 0, by_cli.stdout[-5000:]
    # The CLI prints a traceback ending in the exception: a readable reason naming the param.
    assert f"ParamValidationError: {message}" in by_cli.stdout, by_cli.stdout[-5000:]

    by_api = airflow_stack.post("/dags/deploy_app/dagRuns", {"logical_date": None, "conf": conf})
    assert by_api.status_code == 400, by_api.text
    assert by_api.json()["detail"].startswith(message), by_api.text

    assert airflow_stack.get("/dags/deploy_app/dagRuns").json()["total_entries"] == runs_before
    assert cluster.writes() == []
