"""Node evacuation: ``airflow dags test node_maintenance`` emptying node1 of 10, then 100 releases.

A release here is a managed single-replica Deployment (label ``app.kubernetes.io/managed-by=k8smove``, image
``nginx``: kubesim runs a real HTTP responder process per pod, HTTP readiness probe). Each case gets a fresh
kubesim (node1 marked ``maintenance=scheduled``, node2..node4 the pool); one sqlite Airflow home serves both.
Measured: the command's wall time, the DagRun's own duration, each task's span from the log (the mapped moves
one by one: ``airflow dags test`` runs mapped task instances one after the other, so the DAG's
``max_active_tis_per_dag`` parallelism does not apply), and kubesim's CPU time and RSS during the run.
"""
from __future__ import annotations

import datetime
import os
import re
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .common import Result, all_rolled_out, api_client, cluster, deployment, node_names, now, pods, \
    processes_of_pods, pss_mib, rss_mib, wait_for
from .dag_package import _LOG_LINE, med
from kubesim.resources import NODES
from scripts.demo import run_dag
from scripts.local_airflow import airflow_environ, run_airflow

NAMESPACE, PORT = "default", 80
MANAGED = {"app.kubernetes.io/managed-by": "k8smove"}
NODE_COUNT = 4                  # node1 under maintenance, node2..node4 the pool
CASES = (10, 100)               # releases on node1
RSS_SAMPLE_SECONDS = 0.5
IDLE_SECONDS = 5.0              # kubesim's own CPU with the releases Ready and nothing changing, before the run


# ---- the releases on node1 -------------------------------------------------------------------------------
def release(i: int) -> dict:
    """A managed single-replica Deployment, surge-first (maxSurge 1, maxUnavailable 0), no node pinning."""
    manifest = deployment(f"rel-{i:03d}", 1, None, image="nginx", port=PORT, namespace=NAMESPACE)
    manifest["metadata"]["labels"] = dict(MANAGED)
    manifest["spec"]["template"]["metadata"]["labels"].update(MANAGED)
    return manifest


def releases_on_node1(c, count: int) -> float:
    """Create ``count`` releases with the pool cordoned (so they all land on node1), wait until all are rolled
    out, uncordon the pool and mark node1; returns the seconds it took."""
    from kubernetes.client import AppsV1Api, CoreV1Api
    api = api_client(c)
    core, apps = CoreV1Api(api), AppsV1Api(api)
    pool = node_names(NODE_COUNT)[1:]
    started = now()
    for node in pool:
        core.patch_node(node, {"spec": {"unschedulable": True}})
    for i in range(count):
        apps.create_namespaced_deployment(NAMESPACE, release(i))
    wait_for(lambda: all_rolled_out(c, NAMESPACE) and len(pods(c, NAMESPACE)) == count, 300, interval=0.2,
             what=f"{count} releases rolled out on node1")
    for node in pool:
        core.patch_node(node, {"spec": {"unschedulable": None}})
    core.patch_node("node1", {"metadata": {"labels": {"maintenance": "scheduled"}}})
    return now() - started


# ---- kubesim's CPU and memory while the DAG runs ---------------------------------------------------------
class ProcessUsage:
    """CPU time (user + system, all threads) of this process, which runs kubesim, and its RSS sampled every
    RSS_SAMPLE_SECONDS while the block runs. Pod processes are children and not counted."""

    def __enter__(self):
        self.stop, self.rss = threading.Event(), [rss_mib()]
        self.thread = threading.Thread(target=self._sample, daemon=True)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0, self.t0 = usage.ru_utime + usage.ru_stime, now()
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(RSS_SAMPLE_SECONDS):
            self.rss.append(rss_mib())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_s = usage.ru_utime + usage.ru_stime - self.cpu0
        self.wall_s = now() - self.t0

    def summary(self) -> dict:
        return {"cpu_s": round(self.cpu_s, 2), "wall_s": round(self.wall_s, 2),
                "cpu_share": round(self.cpu_s / self.wall_s, 3), "rss_start_mib": self.rss[0],
                "rss_max_mib": max(self.rss), "rss_end_mib": self.rss[-1]}


# ---- the DAG run's log -----------------------------------------------------------------------------------
def task_spans(log: str) -> list[dict]:
    """Every task instance of one ``airflow dags test`` run from its log timestamps, in run order: task_id,
    map_index, start (epoch), seconds, and the in-line trigger's seconds (the rollout wait) when it had one."""
    stamped = []
    for line in log.splitlines():
        if m := _LOG_LINE.match(line):
            at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
            stamped.append((at, m.group(2)))
    spans: list[dict] = []
    for at, text in stamped:
        if m := re.search(r"\[DAG TEST\] starting task_id=(\w+) map_index=(-?\d+)", text):
            spans.append({"task_id": m.group(1), "map_index": int(m.group(2)), "start": at, "end": None,
                          "trigger_start": None, "trigger_end": None, "api_up": None})
        elif not spans or spans[-1]["end"] is not None:
            continue
        elif len(spans) == 1 and spans[0]["api_up"] is None and re.search(r"Task started", text):
            spans[0]["api_up"] = at            # the first task waits for the in-process execution API
        elif re.search(r"running trigger in line", text):
            spans[-1]["trigger_start"] = at
        elif re.search(r"Trigger completed", text):
            spans[-1]["trigger_end"] = at
        elif (m := re.search(r"\[DAG TEST\] end task task_id=(\w+)", text)) and m.group(1) == spans[-1]["task_id"]:
            spans[-1]["end"] = at
    out = []
    for s in spans:
        if s["end"] is None:
            continue
        trigger = s["trigger_end"] - s["trigger_start"] if s["trigger_start"] and s["trigger_end"] else None
        out.append({"task_id": s["task_id"], "map_index": s["map_index"], "start": s["start"],
                    "s": round(s["end"] - s["start"], 3), "trigger_s": round(trigger, 3) if trigger else None,
                    "api_up_s": round(s["api_up"] - s["start"], 3) if s["api_up"] else None})
    return out


def breakdown(spans: list[dict], called: float, returned: float) -> dict:
    """The run's wall time split: before the first task, the tasks by task_id (moves: each, their in-line
    rollout waits, the rest of each move task), between tasks, after the last task."""
    moves = [s for s in spans if s["task_id"] == "move"]
    between = sum(b["start"] - (a["start"] + a["s"]) for a, b in zip(spans, spans[1:]))
    out = {"before the first task (CLI start-up, DagBag, DagRun)": spans[0]["start"] - called,
           "first task only: until the in-process execution API answered": spans[0]["api_up_s"] or 0.0,
           "tasks other than move (without the above)": sum(s["s"] for s in spans if s["task_id"] != "move")
           - (spans[0]["api_up_s"] or 0.0),
           "move tasks (all)": sum(s["s"] for s in moves),
           "  of which the rollout waits (trigger in line)": sum(s["trigger_s"] or 0 for s in moves),
           "between tasks (dags test's loop)": between,
           "after the last task, to the command's exit": returned - (spans[-1]["start"] + spans[-1]["s"])}
    return {k: round(v, 2) for k, v in out.items()}


def _pss(pid: int) -> float:
    try:
        return pss_mib(pid)
    except OSError:          # gone meanwhile
        return 0.0


# ---- one case --------------------------------------------------------------------------------------------
def evacuate(airflow_home: Path, count: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-maintenance-{count}-"))
    try:
        with cluster(nodes=node_names(NODE_COUNT), work_dir=str(work / "kubesim")) as c:
            report_dir = work / "reports"
            report_dir.mkdir()
            env = airflow_environ(airflow_home, c.kubeconfig_path, report_dir)
            setup_s = releases_on_node1(c, count)
            print(f"    {count} releases Ready on node1 in {setup_s:.1f} s", flush=True)
            with ProcessUsage() as idle:
                time.sleep(IDLE_SECONDS)
            with ProcessUsage() as usage:
                called = time.time()
                run = run_dag(env, "node_maintenance", {}, report_dir)
                returned = time.time()
            log = Path(run["log"]).read_text()
            if run["state"] != "success":
                raise RuntimeError(f"node_maintenance with {count} releases: {run['state']}\n{log[-6000:]}")
            durations = re.findall(r"DagRun Finished: dag_id=node_maintenance, .*?run_duration=([\d.]+)", log)
            spans = task_spans(log)
            node1 = next(n for n in c.store.snapshot(NODES)[0] if n["metadata"]["name"] == "node1")
            placed: dict[str, int] = {}
            for p in pods(c, NAMESPACE):
                node = p["spec"].get("nodeName") or "-"
                placed[node] = placed.get(node, 0) + 1
            moves = [s for s in spans if s["task_id"] == "move"]
            pids = processes_of_pods({p["metadata"]["uid"] for p in pods(c, NAMESPACE)})
            return {"releases": count, "setup_s": round(setup_s, 2), "wall_s": run["wall_s"],
                    "run_duration_s": float(durations[-1]) if durations else None,
                    "kubesim": usage.summary(), "kubesim_idle": idle.summary(),
                    "breakdown_s": breakdown(spans, called, returned) if spans else {},
                    "moves": len(moves), "move_s": [s["s"] for s in moves],
                    "move_trigger_s": [s["trigger_s"] for s in moves],
                    "other_tasks_s": {s["task_id"]: s["s"] for s in spans if s["task_id"] != "move"},
                    "pods_per_node": dict(sorted(placed.items())),
                    "node1": {"unschedulable": bool(node1["spec"].get("unschedulable")),
                              "maintenance": (node1["metadata"].get("labels") or {}).get("maintenance")},
                    "pod_processes": len(pids), "pod_processes_pss_mib": round(sum(map(_pss, pids)), 1),
                    "load_average": [round(x, 2) for x in os.getloadavg()]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure() -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-maintenance-airflow-"))
    raw = {"cases": []}
    try:
        t = now()
        migrated = run_airflow(airflow_environ(home), "db", "migrate")
        if migrated.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrated.stdout[-4000:]}")
        raw["airflow_db_migrate_s"] = round(now() - t, 1)
        for count in CASES:
            print(f"--> node_maintenance, {count} releases on node1", flush=True)
            raw["cases"].append(evacuate(home, count))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return raw


def run() -> Result:
    started = now()
    raw = measure()
    result = Result("Node evacuation", ".venv/bin/python -m bench maintenance")
    result.raw = raw
    cases = {case["releases"]: case for case in raw["cases"]}
    for n, case in cases.items():
        label = f"{n} releases"
        result.add(f"{label}: `airflow dags test node_maintenance`, wall / per release", f"{case['wall_s']} s / "
                   f"{round(case['wall_s'] / n, 2)} s")
        if case["run_duration_s"] is not None:
            result.add(f"{label}: the DagRun itself (run_duration) / per release",
                       f"{round(case['run_duration_s'], 1)} s / {round(case['run_duration_s'] / n, 2)} s")
        if case["move_s"]:
            waits = [w for w in case["move_trigger_s"] if w is not None]
            result.add(f"{label}: mapped move task, median / max (of {case['moves']})",
                       f"{med(case['move_s'])} / {max(case['move_s'])} s")
            if waits:
                result.add(f"{label}:   its rollout wait (trigger in line), median / max",
                           f"{med(waits)} / {max(waits)} s")
                rest = [m - w for m, w in zip(case["move_s"], case["move_trigger_s"]) if w is not None]
                result.add(f"{label}:   the rest of the move task (apply, task start/end), median",
                           f"{med(rest)} s")
        for segment, seconds in case["breakdown_s"].items():
            result.add(f"{label}: wall: {segment}", f"{seconds} s")
        k = case["kubesim"]
        result.add(f"{label}: kubesim (benchmark process) CPU during the run / share of one core",
                   f"{k['cpu_s']} s / {round(100 * k['cpu_share'])} %")
        idle = case["kubesim_idle"]
        result.add(f"{label}: kubesim CPU idle beforehand (releases Ready, {IDLE_SECONDS:.0f} s), share of one core",
                   f"{round(100 * idle['cpu_share'])} %")
        result.add(f"{label}: kubesim RSS start / max / end", f"{k['rss_start_mib']} / {k['rss_max_mib']} / "
                   f"{k['rss_end_mib']} MiB")
        result.add(f"{label}: pod processes after the run / their PSS sum",
                   f"{case['pod_processes']} / {case['pod_processes_pss_mib']} MiB")
        result.add(f"{label}: after: pods per node; node1", f"{case['pods_per_node']}; {case['node1']}")
    if len(cases) == 2:
        (a, ca), (b, cb) = sorted(cases.items())
        result.add(f"growth {a} → {b} releases ({b / a:.0f}×): wall", f"× {cb['wall_s'] / ca['wall_s']:.1f}")
        if ca["run_duration_s"] and cb["run_duration_s"]:
            result.add(f"growth {a} → {b}: DagRun run_duration",
                       f"× {cb['run_duration_s'] / ca['run_duration_s']:.1f}")
        result.add(f"marginal wall per release ({a} → {b}: extra wall / {b - a} extra releases)",
                   f"{(cb['wall_s'] - ca['wall_s']) / (b - a):.2f} s")
        if ca["move_s"] and cb["move_s"]:
            result.add(f"growth {a} → {b}: median move task", f"× {med(cb['move_s']) / med(ca['move_s']):.2f}")
    result.notes.append("load average (1/5/15 min) at the end of each case: " + "; ".join(
        f"{c['releases']}: {c['load_average']}" for c in raw["cases"]))
    result.notes.append(f"airflow db migrate {raw['airflow_db_migrate_s']} s; setup (releases Ready on node1): "
                        + ", ".join(f"{c['releases']}: {c['setup_s']} s" for c in raw["cases"])
                        + f"; whole benchmark {round(now() - started, 1)} s")
    return result
