"""The DAG package, in one run on one kubesim (nodes node1, node2) with a sqlite Airflow pointed at it:

1. parse time of each file in dags/: Airflow's DagBag (``airflow dags report``) and a fresh interpreter;
2. migrate_app under ``airflow dags test`` vs ``kubectl patch`` + ``kubectl rollout status`` for the same move
   (node1 -> node2 and back, alternating, so every move starts from the same state);
3. WaitReady's notice latency: the store event that completes a rollout -> ``wait_for_rollout`` returning;
4. evict-first (``kubectl drain node1``) vs ``airflow dags test migrate_app`` under the availability probe.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO_ROOT, Kubectl, Result, api_client, cluster, ms, now, percentile, pod_ready, pods, \
    probing, wait_for
from kubesim.addresses import external_address
from kubesim.resources import DEPLOYMENTS, NODES, PODS, STATEFULSETS
from scripts.demo import run_dag
from scripts.local_airflow import airflow_environ, run_airflow

NAMESPACE, RELEASE, PORT = "default", "demo", 8080
COMPONENTS = ["app", "db"]
WORKLOADS = [f"{RELEASE}-{component}" for component in COMPONENTS]   # both Deployments (include/templates)
LABEL_NODES = {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}}
DAGBAG_RUNS, FRESH_RUNS = 3, 5        # parse time samples per file
MOVE_PAIRS = 3                        # migrate_app vs kubectl: this many there-and-back pairs of each
ROLLOUTS = 10                         # WaitReady notice latency samples (even: ends where it started)
RATE, WRITE_RATE, SETTLE_SECONDS = 20.0, 5.0, 3.0   # the probe of part 4 (the DAG's own probe: 20 / 5 per s)
PARSE_TARGET_MS, NOTICE_TARGET_MS = 100, 100

# A fresh interpreter: import airflow.sdk (the baseline every DAG file pays anyway), then the DAG file the way
# the DagBag does (a module from a file path); prints both times.
IMPORT_DAG_FILE = """
import importlib.util, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_file_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
t2 = time.perf_counter()
print(json.dumps({"airflow_sdk_s": t1 - t0, "file_s": t2 - t1}))
"""


# ---- the release on the cluster --------------------------------------------------------------------------
def external_ip() -> str:
    """An external address (kubesim.addresses) whose :PORT is free (not a demo's)."""
    for last in range(1, 250):
        ip = external_address((3000 + os.getpid() % 1000) * 256 + last)
        with socket.socket() as s:
            try:
                s.bind((ip, PORT))
                return ip
            except OSError:
                continue
    raise RuntimeError("no free loopback address for the Service")


def release_pods(c) -> list[dict]:
    return [p for p in pods(c, NAMESPACE)
            if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == RELEASE]


def settled_on(c, node: str) -> bool:
    """Every component has exactly one pod, Ready, not terminating, on ``node``."""
    mine = release_pods(c)
    return len(mine) == len(COMPONENTS) and all(
        pod_ready(p) and not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName") == node
        for p in mine)


def placement(c) -> list[str]:
    """What the release's pods are doing, one string each (for the record)."""
    out = []
    for p in release_pods(c):
        status = p.get("status") or {}
        scheduled = next((cond for cond in status.get("conditions") or [] if cond["type"] == "PodScheduled"), {})
        out.append(f"{p['metadata']['name']}: {status.get('phase')} on {p['spec'].get('nodeName') or '-'}"
                   f"{' (' + scheduled['reason'] + ')' if scheduled.get('reason') else ''}"
                   f"{' terminating' if p['metadata'].get('deletionTimestamp') else ''}")
    return sorted(out)


def med(values: list[float]) -> float:
    return round(statistics.median(values), 2)


# ---- 1. parse time ---------------------------------------------------------------------------------------
def _duration_s(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def parse_times(env: dict) -> dict:
    files = sorted(Path(REPO_ROOT, "dags").glob("*.py"))
    dagbag: dict[str, list[float]] = {f.name: [] for f in files}
    for _ in range(DAGBAG_RUNS):
        out = run_airflow(env, "dags", "report", "-o", "json", timeout=120)
        rows = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("[")))
        for row in rows:
            dagbag.setdefault(row["file"], []).append(_duration_s(row["duration"]))
    fresh: dict[str, list[float]] = {f.name: [] for f in files}
    sdk, errors = [], {}
    for _ in range(FRESH_RUNS):
        for f in files:                      # interleaved, so the machine's load hits every file alike
            out = subprocess.run([sys.executable, "-c", IMPORT_DAG_FILE, str(f)], env={**os.environ, **env},
                                 cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
            if out.returncode != 0:          # a broken DAG file is a finding, not the end of the benchmark
                errors[f.name] = out.stderr.strip().splitlines()[-1:]
                continue
            sample = json.loads(out.stdout.strip().splitlines()[-1])
            fresh[f.name].append(sample["file_s"])
            sdk.append(sample["airflow_sdk_s"])
    return {"dagbag_s": dagbag, "fresh_s": fresh, "airflow_sdk_s": sdk, "import_errors": errors}


# ---- 2. migrate_app vs kubectl ---------------------------------------------------------------------------
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z (.*)$")


def timeline(log: str, called: float, returned: float) -> dict:
    """Where the wall time of one ``airflow dags test`` went, from its log's timestamps (UTC) and the epoch
    times the command was started and returned: seconds per segment, in order."""
    stamped = []
    for line in log.splitlines():
        if m := _LOG_LINE.match(line):
            at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
            stamped.append((at, m.group(2)))

    def first(pattern: str, after: float = 0.0) -> float | None:
        return next((at for at, text in stamped if at >= after and re.search(pattern, text)), None)

    tasks = []   # (task_id, started, ended) in run order
    for at, text in stamped:
        if m := re.search(r"\[DAG TEST\] starting task_id=(\w+)", text):
            tasks.append([m.group(1), at, None])
        elif (m := re.search(r"\[DAG TEST\] end task task_id=(\w+)", text)) and tasks and tasks[-1][0] == m.group(1):
            tasks[-1][2] = at
    if not stamped or not tasks or any(end is None for _, _, end in tasks):
        return {}
    out = {"CLI start-up (interpreter, Airflow imports) to its first log line": stamped[0][0] - called,
           "DagBag fill, DAGs written to the DB, DagRun created": tasks[0][1] - stamped[0][0]}
    api_up = first(r"Task started", tasks[0][1])
    if api_up is not None and tasks[0][0] == "preflight":
        out["preflight: until the in-process execution API answered (first task only)"] = api_up - tasks[0][1]
        out["preflight: the task itself"] = tasks[0][2] - api_up
    previous_end = None
    for task_id, started, ended in tasks:
        if previous_end is not None:
            out["between tasks (dags test's loop)"] = out.get("between tasks (dags test's loop)", 0.0) + \
                started - previous_end
        previous_end = ended
        if task_id == "preflight" and api_up is not None:
            continue
        trigger = (first(r"running trigger in line", started), first(r"Trigger completed", started))
        if None not in trigger and trigger[1] <= ended:
            out[f"{task_id}: trigger in line (the rollout)"] = trigger[1] - trigger[0]
            out[f"{task_id}: the task around it"] = ended - started - (trigger[1] - trigger[0])
        else:
            out[task_id] = ended - started
    out["after the last task, to the command's exit"] = returned - tasks[-1][2]
    return {k: round(v, 3) for k, v in out.items()}


def dag_move(c, env: dict, report_dir: Path, node: str) -> dict:
    """``airflow dags test migrate_app`` to ``node``: wall time, the DagRun's own duration, where the time
    went, the report."""
    before = set(report_dir.glob("migrate_app__*.json"))
    called = time.time()
    run = run_dag(env, "migrate_app", {"node_label": {"demo": node}}, report_dir)
    returned = time.time()
    log = Path(run["log"]).read_text()
    if run["state"] != "success":
        raise RuntimeError(f"migrate_app to {node}: {run['state']}\n{log[-4000:]}")
    durations = re.findall(r"DagRun Finished: dag_id=migrate_app, .*?run_duration=([\d.]+)", log)
    new = sorted(set(report_dir.glob("migrate_app__*.json")) - before)
    report = json.loads(new[-1].read_text()) if new else {}
    wait_for(lambda: settled_on(c, node), 60, what=f"the release settled on {node}")
    return {"wall_s": run["wall_s"], "run_duration_s": float(durations[-1]) if durations else None,
            "timeline_s": timeline(log, called, returned),
            "outcome": report.get("outcome"), "report_duration_s": report.get("duration_s"),
            "steps_s": {task: step.get("duration_s") for task, step in report.get("steps", {}).items()},
            "probe": {k: report.get("probe", {}).get(k) for k in ("sent", "failed", "max_gap_ms")},
            "db": report.get("db")}


def kubectl_move(c, kubectl: Kubectl, node: str) -> dict:
    """The same move by hand: nodeSelector of both Deployments, then ``kubectl rollout status`` of both."""
    patch = json.dumps({"spec": {"template": {"spec": {"nodeSelector": {"demo": node}}}}})
    started = now()
    for name in WORKLOADS:
        kubectl("patch", "deployment", name, "--type", "merge", "-p", patch)
    patched = now() - started
    for name in WORKLOADS:
        kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s", timeout=150)
    returned = now() - started
    wait_for(lambda: settled_on(c, node), 60, what=f"the release settled on {node}")
    return {"wall_s": round(returned, 2), "patched_s": round(patched, 2), "settled_s": round(now() - started, 2)}


def dag_vs_kubectl(c, env: dict, report_dir: Path, kubectl: Kubectl) -> dict:
    moves = {"dag": [], "kubectl": []}
    for pair in range(MOVE_PAIRS):
        order = ("dag", "kubectl") if pair % 2 == 0 else ("kubectl", "dag")   # alternate who goes first
        for how in order:
            for node in ("node2", "node1"):
                move = dag_move(c, env, report_dir, node) if how == "dag" else kubectl_move(c, kubectl, node)
                moves[how].append({"to": node, **move})
                print(f"    {how} -> {node}: {move['wall_s']} s", flush=True)
    return moves


# ---- 3. WaitReady notice latency ------------------------------------------------------------------------
class StoreEvents:
    """Every committed store change with its time (``cluster.store.add_listener``), while ``on``."""

    def __init__(self, c):
        self.events: list[tuple[float, str, str, dict]] = []
        self.on = False
        c.store.add_listener(self._record)

    def _record(self, event) -> None:     # runs under the store lock: append only
        if self.on:
            self.events.append((time.monotonic(), event.resource.kind, event.type, event.object))


def wait_ready(kubeconfig: str, workloads: list[dict], timeout: float) -> tuple[dict, float, float]:
    """k8smove.watching.wait_for_rollout over kubernetes_asyncio, as WaitReady's trigger runs it; returns
    (result, called at, returned at) in time.monotonic()."""
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import ApiClient, Configuration

    from k8smove.watching import wait_for_rollout

    async def run():
        configuration = Configuration()
        await config.load_kube_config(kubeconfig, client_configuration=configuration)
        async with ApiClient(configuration) as api:
            called = time.monotonic()
            result = await wait_for_rollout(api, NAMESPACE, RELEASE, workloads, timeout)
            return result, called, time.monotonic()
    return asyncio.run(run())


def notice_latency(c, recorder: StoreEvents) -> list[dict]:
    from k8smove.apply import apply_manifests
    from k8smove.preflight import recorded_release
    from k8smove.render import render_manifests
    from k8smove.rollout import RolloutTracker, workloads_in

    kinds = {rt.kind: rt for rt in (NODES, PODS, DEPLOYMENTS, STATEFULSETS)}
    api = api_client(c)
    values, _ = recorded_release(api, NAMESPACE, RELEASE, COMPONENTS)
    samples = []
    for i in range(ROLLOUTS):
        node = "node2" if i % 2 == 0 else "node1"
        manifests = render_manifests({**values, "node_label": {"demo": node}}, COMPONENTS)
        workloads = workloads_in(manifests)
        # The cluster is quiet here (previous rollout settled): its state now, then every change after it,
        # replayed through the same RolloutTracker the wait uses, tells when the rollout became complete.
        tracker = RolloutTracker(workloads)
        mark = len(recorder.events)
        recorder.on = True
        old_pods = set()
        for kind, rt in kinds.items():
            for obj in c.store.snapshot(rt)[0]:
                tracker.observe(kind, "ADDED", obj)
                if kind == "Pod":
                    old_pods.add(obj["metadata"]["name"])
        applied = time.monotonic()
        apply_manifests(api, manifests)
        result, called, returned = wait_ready(c.kubeconfig_path, workloads, 120)
        recorder.on = False
        complete_at, completed_by, new_ready = None, None, {}
        for at, kind, event_type, obj in recorder.events[mark:]:
            if kind not in kinds:
                continue
            tracker.observe(kind, event_type, obj)
            name = obj["metadata"]["name"]
            if kind == "Pod" and event_type != "DELETED" and name not in old_pods and name not in new_ready \
                    and pod_ready(obj):
                new_ready[name] = at
            if not tracker.pending():
                complete_at, completed_by = at, f"{kind} {name} {event_type}"
                break
        samples.append({
            "to": node, "result": result["status"], "completed_by": completed_by,
            "rollout_s": round(returned - applied, 3),
            "wait_started_before_complete": complete_at is not None and called < complete_at,
            "notice_ms": ms(returned - complete_at) if complete_at is not None else None,
            "last_new_pod_ready_ms": ms(returned - max(new_ready.values())) if new_ready else None})
        wait_for(lambda: settled_on(c, node), 60, what=f"the release settled on {node}")
    recorder.events.clear()
    return samples


# ---- 4. evict-first vs migrate_app -----------------------------------------------------------------------
def rows_lost(url: str, probe: dict) -> int | None:
    from k8smove.availability import rows_present
    try:
        present = set(rows_present(url))
    except Exception:  # the app or its DB not answering: cannot tell
        return None
    return len(set(probe["writes"]["acknowledged"]) - present)


def _brief(probe: dict) -> dict:
    return {**{k: v for k, v in probe.items() if k != "writes"},
            "writes": {k: v for k, v in probe["writes"].items() if k != "acknowledged"},
            "acknowledged": len(probe["writes"]["acknowledged"])}


def evict_first(c, kubectl: Kubectl, url: str) -> dict:
    """``kubectl drain node1`` with the release on node1, then uncordon as soon as the drain has returned and
    the replacements are seen Pending, and wait until the release is Ready on node1 again."""
    out = {}
    with probing(url, RATE, SETTLE_SECONDS, WRITE_RATE) as probe:
        started = now()
        kubectl("drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--force", timeout=180)
        out["command_s"] = round(now() - started, 2)
        try:
            wait_for(lambda: len(release_pods(c)) == len(COMPONENTS) and all(
                not p["spec"].get("nodeName") for p in release_pods(c)), 10, what="replacements Pending")
        except TimeoutError:
            pass                                     # record what there is instead
        out["after_drain"] = placement(c)
        kubectl("uncordon", "node1")
        out["uncordoned_s"] = round(now() - started, 2)
        wait_for(lambda: settled_on(c, "node1"), 120, what="the release back on node1")
        out["restored_s"] = round(now() - started, 2)
    out["rows_lost"] = rows_lost(url, probe)
    return {**out, "probe": _brief(probe)}


def migrate_under_probe(c, env: dict, report_dir: Path, url: str) -> dict:
    with probing(url, RATE, SETTLE_SECONDS, WRITE_RATE) as probe:
        started = now()
        move = dag_move(c, env, report_dir, "node2")
        command_s = round(now() - started, 2)
    return {"command_s": command_s, "rows_lost": rows_lost(url, probe), "dag": move, "probe": _brief(probe)}


# ---- the run ---------------------------------------------------------------------------------------------
def measure() -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-dag-package-"))
    phases, raw = {}, {}
    try:
        with cluster(nodes=["node1", "node2"], work_dir=str(work / "kubesim")) as c:
            recorder = StoreEvents(c)
            report_dir = work / "reports"
            report_dir.mkdir()
            env = airflow_environ(work / "airflow", c.kubeconfig_path, report_dir)
            kubectl = Kubectl(c)
            t = now()
            migrated = run_airflow(env, "db", "migrate")
            if migrated.returncode != 0:
                raise RuntimeError(f"airflow db migrate failed:\n{migrated.stdout[-4000:]}")
            phases["airflow db migrate"] = now() - t

            t = now()
            print("--> 1. parse time", flush=True)
            raw["parse"] = parse_times(env)
            phases["1. parse time"] = now() - t

            t = now()
            ip = external_ip()
            url = f"http://{ip}:{PORT}/"
            deploy = run_dag(env, "deploy_app", {"label_nodes": LABEL_NODES, "node_label": {"demo": "node1"},
                                                 "external_ip": ip, "port": PORT}, report_dir)
            if deploy["state"] != "success":
                raise RuntimeError(f"deploy_app: {deploy['state']}\n{Path(deploy['log']).read_text()[-4000:]}")
            wait_for(lambda: settled_on(c, "node1"), 60, what="the release settled on node1")
            raw["deploy"] = deploy
            phases["deploy_app"] = now() - t

            t = now()
            print("--> 2. migrate_app vs kubectl", flush=True)
            raw["moves"] = dag_vs_kubectl(c, env, report_dir, kubectl)
            phases["2. migrate_app vs kubectl"] = now() - t

            t = now()
            print("--> 3. WaitReady notice latency", flush=True)
            raw["notice"] = notice_latency(c, recorder)
            phases["3. notice latency"] = now() - t

            t = now()
            print("--> 4. evict-first vs migrate_app", flush=True)
            raw["drain"] = evict_first(c, kubectl, url)
            raw["migrate"] = migrate_under_probe(c, env, report_dir, url)
            phases["4. drain vs migrate_app"] = now() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    return raw


def run() -> Result:
    started = now()
    raw = measure()
    result = Result("DAG package", ".venv/bin/python -m bench dag_package")
    result.raw = raw

    parse = raw["parse"]
    for name in sorted(parse["fresh_s"]):
        dagbag, fresh = parse["dagbag_s"].get(name, []), parse["fresh_s"][name]
        if dagbag:
            result.add(f"parse `dags/{name}`: DagBag (`airflow dags report`), median of {len(dagbag)}",
                       f"{ms(statistics.median(dagbag))} ms", f"≤ {PARSE_TARGET_MS} ms",
                       ms(statistics.median(dagbag)) <= PARSE_TARGET_MS)
        if not fresh:
            result.add(f"parse `dags/{name}`: fresh interpreter", f"import failed: {parse['import_errors'].get(name)}")
            continue
        result.add(f"parse `dags/{name}`: fresh interpreter, after `import airflow.sdk`, median / max of {len(fresh)}",
                   f"{ms(statistics.median(fresh))} / {ms(max(fresh))} ms", f"≤ {PARSE_TARGET_MS} ms",
                   ms(statistics.median(fresh)) <= PARSE_TARGET_MS)
    result.add("`import airflow.sdk` in a fresh interpreter (the baseline left out above), median",
               f"{ms(statistics.median(parse['airflow_sdk_s']))} ms")

    dag, manual = raw["moves"]["dag"], raw["moves"]["kubectl"]
    dag_wall, manual_wall = med([m["wall_s"] for m in dag]), med([m["wall_s"] for m in manual])
    run_durations = [m["run_duration_s"] for m in dag if m["run_duration_s"] is not None]
    result.add(f"move node1⇄node2: `airflow dags test migrate_app`, wall, median of {len(dag)}", f"{dag_wall} s")
    if run_durations:
        result.add("  of which the DagRun itself (its run_duration), median", f"{med(run_durations)} s")
    result.add(f"move node1⇄node2: `kubectl patch` ×2 + `kubectl rollout status` ×2, wall, median of {len(manual)}",
               f"{manual_wall} s")
    result.add("difference (DAG − kubectl), medians", f"{round(dag_wall - manual_wall, 2)} s")
    segments: dict[str, list[float]] = {}
    for move in dag:
        for segment, seconds in move["timeline_s"].items():
            segments.setdefault(segment, []).append(seconds)
    for segment, seconds in segments.items():
        result.add(f"  migrate_app wall: {segment}, median of {len(seconds)}", f"{med(seconds)} s")

    notice = raw["notice"]
    valid = [s for s in notice if s["notice_ms"] is not None and s["wait_started_before_complete"]]
    if valid:
        lat = [s["notice_ms"] / 1000 for s in valid]
        result.add(f"WaitReady notice: rollout complete in the store → `wait_for_rollout` returned, p50 / max "
                   f"({len(valid)} rollouts)", f"{ms(percentile(lat, 0.5))} / {ms(max(lat))} ms",
                   f"≤ {NOTICE_TARGET_MS} ms", ms(max(lat)) <= NOTICE_TARGET_MS)
        ready = [s["last_new_pod_ready_ms"] / 1000 for s in valid if s["last_new_pod_ready_ms"] is not None]
        result.add("  last new pod Ready in the store → returned, p50 / max", f"{ms(percentile(ready, 0.5))} / "
                   f"{ms(max(ready))} ms")
        rollout = [s["rollout_s"] for s in valid]
        result.add("  apply → returned (whole rollout), p50 / max", f"{ms(percentile(rollout, 0.5))} / "
                   f"{ms(max(rollout))} ms")
    if len(valid) != len(notice):
        result.notes.append(f"{len(notice) - len(valid)} of {len(notice)} rollouts left out: complete before the "
                            "wait started or never complete in the replay (see raw)")

    for label, s in (("(a) `kubectl drain node1`", raw["drain"]), ("(b) `airflow dags test migrate_app` → node2",
                                                                    raw["migrate"])):
        p = s["probe"]
        result.add(f"{label}: GET sent / failed", f"{p['sent']} / {p['failed']}")
        result.add(f"{label}: longest gap without an answer", f"{p['max_gap_ms']} ms")
        result.add(f"{label}: errors", ", ".join(f"{k} ×{v}" for k, v in p["errors"].items()) or "none")
        result.add(f"{label}: writes sent / failed / acknowledged rows lost",
                   f"{p['writes']['sent']} / {p['writes']['failed']} / {s['rows_lost']}")
    result.add("(a) drain returned / uncordoned / release Ready on node1 again (from the drain's start)",
               f"{raw['drain']['command_s']} / {raw['drain']['uncordoned_s']} / {raw['drain']['restored_s']} s")
    result.add("(b) `airflow dags test` returned", f"{raw['migrate']['command_s']} s")
    own = raw["migrate"]["dag"]
    result.add("(b) the DAG's own probe (its report): GET sent / failed / longest gap; rows acknowledged / lost",
               f"{own['probe']['sent']} / {own['probe']['failed']} / {own['probe']['max_gap_ms']} ms; "
               f"{(own['db'] or {}).get('rows_acknowledged')} / {(own['db'] or {}).get('rows_lost')}")
    result.notes.append(f"after the drain: {'; '.join(raw['drain']['after_drain'])}")
    result.notes.append("phases (s): " + ", ".join(f"{k} {v}" for k, v in raw["phases_s"].items())
                        + f"; whole benchmark {round(now() - started, 1)} s")
    return result
