"""Runs in a row under the REAL scheduler (issue 15's proof): 20 ``migrate_app`` runs back and forth, then 20
``node_maintenance`` windows each closed by ``end_maintenance``, on each of two local Airflows (api-server,
scheduler with the idle sleep we ship, dag-processor, triggerer; LocalExecutor) against one kubesim (node1, node2),
interleaved run by run. The two differ only in ``[k8smove] wait_in_worker_seconds``: 15 (shipped: a rollout wait
watches in the worker first and defers only if the rollout takes longer) and 0 (every wait defers at once, as
before), to count how often Airflow's deferral race (apache/airflow#71580, #72716) strikes each.

Counted, per run: the run's state, the outcome in its report (each release's, for maintenance), failed probe
requests, rows lost, whether ``rollback`` ran, and every task try beyond the first (a retry). Per Airflow: the
task instances its scheduler failed on a stale executor event (the race's signature in the scheduler log).
Nothing is retried by the benchmark itself.

Maintenance: three releases (App + PostgreSQL each, placed by node_label ``demo=<node>``) and one Deployment
k8smove did not deploy, on the marked node; the window moves the releases whole to ``target_selector
{"demo": <other node>}`` and the other Deployment surge-first, then ``end_maintenance`` brings the node back.
The next window empties the other node.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .common import Result, api_client, cluster, create_app, pods, ready_pods, wait_for
from .evacuation import deploy_releases

MIGRATIONS = 20
WINDOWS = 20
MAINTENANCE_RELEASES = 3
RUN_TIMEOUT = 600
COMMAND = "make bench BENCH=reliability   # or: .venv/bin/python -m bench reliability"
CONFIGS = {"waits 15 s in the worker (shipped)": {}, "defers at once": {"AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS": "0"}}
# The scheduler's words when a stale executor event fails a task that is running again (apache/airflow#71580)
RACE = re.compile(r"reported that the task instance <TaskInstance: (\S+) (\S+) \[(?:running|queued)\]")


def trigger(stack, dag_id: str, conf: dict) -> tuple[dict, float, str]:
    """One run through the REST API, waited for; (the run, seconds from queued to end, its run id)."""
    run_id = f"bench__{dag_id}__{time.time_ns()}"
    response = stack.post(f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf})
    if response.status_code != 200:
        raise RuntimeError(f"{dag_id}: {response.status_code} {response.text}")
    run = stack.wait_for_run(dag_id, run_id, RUN_TIMEOUT)
    return run, _seconds(run["queued_at"], run["end_date"]), run_id


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    parse = lambda ts: datetime.fromisoformat(ts.replace("Z", "+00:00"))   # noqa: E731
    return round((parse(end) - parse(start)).total_seconds(), 2)


def retried_tasks(stack, dag_id: str, run_id: str) -> dict[str, int]:
    """task (map index) -> its try number, for every task instance that needed more than one try."""
    response = stack.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    return {f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"]: ti["try_number"]
            for ti in response.json()["task_instances"] if (ti["try_number"] or 0) > 1}


def migrate_once(stack, release: str, node: str) -> dict:
    run, took, run_id = trigger(stack, "migrate_app", {"release": release, "node_label": {"demo": node}})
    report = json.loads((stack.report_dir / f"migrate_app__{run_id}.json").read_text())
    return {"state": run["state"], "seconds": took, "outcome": report["outcome"],
            "failed": report["probe"]["failed"], "sent": report["probe"]["sent"],
            "rows_lost": report["db"]["rows_lost"], "rollback": stack.task_states("migrate_app", run_id).get("rollback"),
            "retried": retried_tasks(stack, "migrate_app", run_id),
            # why a run did not end moved: kept, since the stack's reports go with it
            **({"reason": report.get("reason"), "probe_errors": report["probe"].get("errors"),
                "writes": report["probe"].get("writes")} if report["outcome"] != "moved" else {})}


def maintenance_window(c, stack, source: str, target: str) -> dict:
    from kubernetes.client import CoreV1Api

    core = CoreV1Api(api_client(c))
    core.patch_node(source, {"metadata": {"labels": {"maintenance": "scheduled"}}})
    run, took, run_id = trigger(stack, "node_maintenance", {"target_selector": {"demo": target}})
    report = json.loads((stack.report_dir / f"node_maintenance__{run_id}.json").read_text())
    releases = report.get("releases") or {}
    left = sorted(p["metadata"]["name"] for p in pods(c, "default")
                  if p["spec"].get("nodeName") == source and not p["metadata"].get("deletionTimestamp"))
    ended, end_took, _ = trigger(stack, "end_maintenance", {})
    node = core.read_node(source)
    return {"state": run["state"], "seconds": took, "outcomes": sorted({r.get("outcome") for r in releases.values()}),
            **({"reason": report.get("reason")} if run["state"] != "success" else {}),
            "releases": len(releases),
            "failed": sum((r.get("probe") or {}).get("failed", 0) for r in releases.values()),
            "sent": sum((r.get("probe") or {}).get("sent", 0) for r in releases.values()),
            "rows_lost": sum((r.get("db") or {}).get("rows_lost", 0) for r in releases.values()),
            "left_on_source": left, "retried": retried_tasks(stack, "node_maintenance", run_id),
            "end_state": ended["state"], "end_seconds": end_took,
            "source_back": not node.spec.unschedulable and "maintenance" not in (node.metadata.labels or {})}


def races(stack) -> list[str]:
    """Task instances this Airflow's scheduler failed on a stale executor event (each counted once)."""
    return sorted({f"{m.group(1)} {m.group(2)}" for m in RACE.finditer(stack.log("scheduler"))})


def run() -> Result:
    import logging

    from scripts.airflow_stack import start_stack

    logging.getLogger("k8smove").setLevel(logging.WARNING)
    result = Result("Runs in a row under the real scheduler: migrate_app and node_maintenance", COMMAND)
    figures = {name: {"migrations": [], "windows": [], "races": []} for name in CONFIGS}
    with cluster(nodes=["node1", "node2"], pod_startup_seconds=0.5, max_grace_seconds=2.0) as c:
        deploy_releases(c, MAINTENANCE_RELEASES)
        create_app(c, "web", 1, None)          # a workload k8smove did not deploy: moved surge-first
        wait_for(lambda: ready_pods(c, "web"), 60, 0.5, "the other Deployment Ready")
        stacks, homes = {}, []
        try:
            for name, extra in CONFIGS.items():
                homes.append(Path(tempfile.mkdtemp(prefix="bench-reliability-airflow-")))
                stacks[name] = start_stack(homes[-1], c.kubeconfig_path, extra=extra,
                                           dag_ids=("migrate_app", "node_maintenance", "end_maintenance"))
            for i in range(MIGRATIONS):
                node = "node2" if i % 2 == 0 else "node1"
                for (name, stack), release in zip(stacks.items(), ("r00", "r01")):
                    row = migrate_once(stack, release, node)
                    print(f"[{name}] migrate_app {i + 1}/{MIGRATIONS} {release} -> {node}: {row}", flush=True)
                    figures[name]["migrations"].append(row)
            source = "node1"
            for i in range(WINDOWS):
                for name, stack in stacks.items():
                    target = "node2" if source == "node1" else "node1"
                    row = maintenance_window(c, stack, source, target)
                    print(f"[{name}] node_maintenance {i + 1}/{WINDOWS} {source} -> {target}: {row}", flush=True)
                    figures[name]["windows"].append(row)
                    source = target
            for name, stack in stacks.items():
                figures[name]["races"] = races(stack)
        finally:
            for stack in stacks.values():
                stack.stop()
            for home in homes:
                shutil.rmtree(home, ignore_errors=True)

    for name, f in figures.items():
        migrations, windows = f["migrations"], f["windows"]
        clean_moves = [r for r in migrations if r["state"] == "success" and r["outcome"] == "moved"
                       and r["failed"] == 0 and r["rows_lost"] == 0 and r["rollback"] == "skipped"]
        result.add(f"[{name}] migrate_app back and forth: moved, 0 failed requests, 0 rows lost, no rollback",
                   f"{len(clean_moves)} of {MIGRATIONS}", f"{MIGRATIONS} of {MIGRATIONS}",
                   len(clean_moves) == MIGRATIONS)
        result.add(f"[{name}] migrate_app: requests sent / failed, rows lost",
                   f"{sum(r['sent'] for r in migrations)} / {sum(r['failed'] for r in migrations)}, "
                   f"{sum(r['rows_lost'] for r in migrations)}")
        result.add(f"[{name}] migrate_app, trigger -> done, median (min, max)", _spread(migrations))
        result.add(f"[{name}] migrate_app: runs with a retried task", _retries(migrations))
        clean_windows = [r for r in windows if r["state"] == "success" and r["outcomes"] == ["moved"]
                         and r["releases"] == MAINTENANCE_RELEASES and r["failed"] == 0 and r["rows_lost"] == 0
                         and not r["left_on_source"] and r["end_state"] == "success" and r["source_back"]]
        result.add(f"[{name}] node_maintenance: succeeded, {MAINTENANCE_RELEASES} releases moved, node empty, "
                   "0 failed requests, 0 rows lost, end_maintenance brought it back",
                   f"{len(clean_windows)} of {WINDOWS}", f"{WINDOWS} of {WINDOWS}", len(clean_windows) == WINDOWS)
        result.add(f"[{name}] node_maintenance: requests sent / failed, rows lost",
                   f"{sum(r['sent'] for r in windows)} / {sum(r['failed'] for r in windows)}, "
                   f"{sum(r['rows_lost'] for r in windows)}")
        result.add(f"[{name}] node_maintenance, trigger -> done, median (min, max)", _spread(windows))
        result.add(f"[{name}] node_maintenance: runs with a retried task", _retries(windows))
        result.add(f"[{name}] task instances failed by the deferral race (scheduler log)", len(f["races"]))
    result.raw = figures
    result.notes.append(f"One kubesim; on each Airflow {MIGRATIONS} migrate_app runs of its own release, then "
                        f"{WINDOWS} maintenance windows over all {MAINTENANCE_RELEASES} releases and one other "
                        "Deployment, the two Airflows taking turns.")
    return result


def _spread(runs: list[dict]) -> str:
    seconds = [r["seconds"] for r in runs]
    return f"{statistics.median(seconds):.2f} s ({min(seconds):.2f}, {max(seconds):.2f})"


def _retries(runs: list[dict]) -> str:
    hit = [r["retried"] for r in runs if r["retried"]]
    return f"{len(hit)} of {len(runs)}" + (f": {hit}" if hit else "")
