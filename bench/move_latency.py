"""One move from trigger to done under the REAL scheduler, beside its floors, interleaved in one sitting.

One kubesim (node1, node2) with one release (App + PostgreSQL) created by the move engine; three full local
Airflows against it (api-server, scheduler, dag-processor, triggerer; LocalExecutor; only the measured one runs,
the others are stopped meanwhile): what the project ships
(the scheduler's idle sleep 0.1 s: scripts/airflow_stack.FAST_REACTION, docker-compose, ``make ui``; rollout
waits 15 s in the worker before they defer), the same with every wait deferred at once, and Airflow's default
idle sleep of 1 s. Each round, on each: ``migrate_app`` back and forth (REST trigger ->
run end, from the API's own ``queued_at``/``end_date``), and ``noop_move``, a DAG of migrate_app's shape whose
tasks do nothing (the middle one defers to a trigger that fires at once): Airflow's own floor. Then
``kubectl patch`` + ``kubectl rollout status`` of both workloads: Kubernetes' floor. Last, each scheduler's CPU
time over an idle minute.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from .common import Kubectl, Result, cluster
from .evacuation import deploy_releases

ROUNDS = int(os.environ.get("BENCH_MOVE_LATENCY_ROUNDS", "5"))
SETTLE_SECONDS = 2    # a continued scheduler catches up on its heartbeats before the trigger
IDLE_SECONDS = 60
COMMAND = "make bench BENCH=move_latency   # or: .venv/bin/python -m bench move_latency"
TARGET_SECONDS = 8.0
DEFER_AT_ONCE = {"AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS": "0"}   # how every wait ran before the worker's wait

NOOP_DAG = '''
"""The shape of migrate_app with tasks that do nothing: how long Airflow itself takes to run it."""
from datetime import datetime, timezone

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import DAG, BaseOperator


class DeferOnce(BaseOperator):
    def execute(self, context):
        self.defer(trigger=DateTimeTrigger(moment=datetime.now(timezone.utc)), method_name="done")

    def done(self, context, event=None):
        return None


with DAG(dag_id="noop_move", schedule=None, max_active_runs=16):
    preflight = EmptyOperator(task_id="preflight")
    start_probe = EmptyOperator(task_id="start_probe").as_setup()
    move = DeferOnce(task_id="move")
    rollback = EmptyOperator(task_id="rollback", trigger_rule="one_failed")
    stop_probe = EmptyOperator(task_id="stop_probe").as_teardown(setups=start_probe)
    report = EmptyOperator(task_id="report", trigger_rule="all_done")
    preflight >> start_probe >> move >> rollback >> stop_probe
    move >> stop_probe
    [preflight, move, rollback, stop_probe] >> report
'''


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def timed_run(stack, dag_id: str, conf: dict, with_run_id: bool = False):
    run_id = f"bench__{dag_id}__{time.time_ns()}"
    response = stack.post(f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf})
    if response.status_code != 200:
        raise RuntimeError(response.text)
    while True:
        run = stack.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()
        if run["state"] in ("success", "failed"):
            break
        time.sleep(0.1)
    if run["state"] != "success":
        states = stack.task_states(dag_id, run_id)
        logs = {task: stack.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}/logs/1").text[-3000:]
                for task, state in states.items() if state == "failed"}
        raise RuntimeError(f"{dag_id} {run_id}: {run['state']}: {states}; logs of the failed tasks: {logs}")
    took = (parse(run["end_date"]) - parse(run["queued_at"])).total_seconds()
    return (took, run_id) if with_run_id else took


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (from /proc)."""
    total = 0.0
    for entry in [str(pid)] + subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True,
                                             text=True).stdout.split():
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextlib.contextmanager
def alone(stacks: dict, active: str | None):
    """Only ``active``'s Airflow runs (None: none of them): the others' process groups are stopped (SIGSTOP) and
    continued after, so a measured run shares the machine with no idle scheduler polling at 10 Hz beside it, as
    a user's single Airflow does not. Their state waits in their own metadata DBs."""
    paused = [p for name, stack in stacks.items() if name != active for p in stack.processes.values()
              if p.poll() is None]
    for process in paused:
        os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for process in paused:
            os.killpg(process.pid, signal.SIGCONT)


def kubectl_floor(c, node: str) -> float:
    """Both workloads patched to ``node`` and rolled out (the DB stop-and-start: Kubernetes has no switchover)."""
    kubectl = Kubectl(c)
    # the DB's Deployment is the serving instance's: <release>-db, or <release>-db-<n> after a switchover
    names = kubectl("get", "deployments", "-l", "app.kubernetes.io/instance=r00", "-o",
                    "jsonpath={.items[*].metadata.name}").stdout.split()
    started = time.monotonic()
    for name in names:
        kubectl("patch", "deployment", name, "-p",
                f'{{"spec": {{"template": {{"spec": {{"nodeSelector": {{"demo": "{node}"}}}}}}}}}}')
    for name in names:
        kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s", timeout=150)
    return time.monotonic() - started


def run() -> Result:
    import logging

    from scripts.airflow_stack import DAG_IDS, start_stack
    from scripts.local_airflow import ROOT

    logging.getLogger("k8smove").setLevel(logging.WARNING)
    result = Result("One move, trigger to done, under the real scheduler", COMMAND)
    figures = {"fast": {"migrate": [], "noop": []}, "defer": {"migrate": [], "noop": []},
               "default": {"migrate": [], "noop": []}, "kubectl": []}
    idle_cpu = {}
    with cluster(nodes=["node1", "node2"], pod_startup_seconds=0.5, max_grace_seconds=2.0) as c:
        deploy_releases(c, 1)
        dags = Path(tempfile.mkdtemp(prefix="bench-move-latency-dags-"))
        for dag_file in (ROOT / "dags").glob("*.py"):
            (dags / dag_file.name).symlink_to(dag_file)
        (dags / "noop_move.py").write_text(NOOP_DAG)
        stacks, homes = {}, []
        try:
            for name, idle, wait in (("fast", True, {}), ("defer", True, DEFER_AT_ONCE), ("default", False, {})):
                home = Path(tempfile.mkdtemp(prefix=f"bench-move-latency-{name}-"))
                homes.append(home)
                stacks[name] = start_stack(home, c.kubeconfig_path, dag_ids=(*DAG_IDS, "noop_move"), fast=idle,
                                           extra={"AIRFLOW__CORE__DAGS_FOLDER": str(dags), **wait})
            node = "node1"
            for _ in range(ROUNDS):
                for name, stack in stacks.items():
                    node = "node2" if node == "node1" else "node1"
                    with alone(stacks, name):
                        time.sleep(SETTLE_SECONDS)
                        figures[name]["migrate"].append(timed_run(stack, "migrate_app", {
                            "release": "r00", "node_label": {"demo": node}}))
                        figures[name]["noop"].append(timed_run(stack, "noop_move", {}))
                node = "node2" if node == "node1" else "node1"
                with alone(stacks, None):
                    figures["kubectl"].append(kubectl_floor(c, node))
            for name, stack in ((n, stacks[n]) for n in ("fast", "default")):
                with alone(stacks, name):
                    before = cpu_seconds(stack.processes["scheduler"].pid)
                    time.sleep(IDLE_SECONDS)
                    idle_cpu[name] = cpu_seconds(stack.processes["scheduler"].pid) - before
        finally:
            for stack in stacks.values():
                stack.stop()
            for path in [dags, *homes]:
                shutil.rmtree(path, ignore_errors=True)

    def med(values):
        return round(statistics.median(values), 2)

    fast, defer, default = figures["fast"], figures["defer"], figures["default"]
    result.add("migrate_app, trigger -> done, median (idle sleep 0.1 s)", f"{med(fast['migrate'])} s "
               f"(min {min(fast['migrate']):.2f}, max {max(fast['migrate']):.2f})", f"< {TARGET_SECONDS} s",
               med(fast["migrate"]) < TARGET_SECONDS)
    result.add("same, every rollout wait deferred at once (wait_in_worker_seconds 0)", f"{med(defer['migrate'])} s "
               f"(min {min(defer['migrate']):.2f}, max {max(defer['migrate']):.2f})")
    result.add("migrate_app, trigger -> done, median (Airflow's default 1 s)", f"{med(default['migrate'])} s")
    result.add("noop_move (Airflow's floor), median, 0.1 s / 1 s", f"{med(fast['noop'])} s / {med(default['noop'])} s")
    result.add("kubectl patch + rollout status (Kubernetes' floor), median", f"{med(figures['kubectl'])} s")
    result.add("scheduler CPU over an idle minute, 0.1 s / 1 s",
               f"{idle_cpu['fast']:.1f} s / {idle_cpu['default']:.1f} s "
               f"({100 * idle_cpu['fast'] / IDLE_SECONDS:.1f} % / {100 * idle_cpu['default'] / IDLE_SECONDS:.1f} % "
               "of a core)")
    result.raw = {**figures, "idle_cpu_s": idle_cpu, "rounds": ROUNDS}
    result.notes.append(f"{ROUNDS} rounds; each round runs migrate_app and noop_move on each Airflow, then the "
                        "kubectl floor; while one Airflow runs, the other two are stopped (SIGSTOP), and all three "
                        "during the kubectl floor (since 2026-12-03 10:45 UTC; before, the idle ones ran beside); the release is an App and a PostgreSQL DB (migrate_app moves the DB by "
                        "switchover; the kubectl floor stop-and-start).")
    return result
