"""Node evacuation under the REAL scheduler: node_maintenance moving N k8smove releases (App + PostgreSQL each)
off node1, beside ``kubectl drain node1`` on the same setup; N = 10 and 40, interleaved in one sitting.

Each case gets a fresh kubesim (node1 and node2, room for every pod) with N releases on node1, created by the
move engine itself (what deploy_app does, without N Airflow runs). Then:

* **k8smove**: a full local Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor) started for
  the cluster; node1 labelled ``maintenance=scheduled``; ``node_maintenance`` triggered through the REST API with
  ``{"target_selector": {"demo": "node2"}}``; timed from the trigger to the run's end. Failed requests come from
  the run's own report (one probe per release, 100 GET/s and 20 writes/s in all).
* **drain**: node2 also labelled ``demo=node1`` (so the evicted pods may run there: drain's best case, as it
  cannot change where a release is pinned); the same probe budget from this process; ``kubectl drain node1``
  timed until every release's pods are Ready on node2 again.

Both: the largest number of releases in flight at once (a pod not Ready, or pods on both nodes), sampled.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from kubernetes.client import CoreV1Api

from kubesim.addresses import external_address

from .common import Kubectl, Result, TreeCpu, api_client, cluster, pod_ready, pods, wait_for

# BENCH_EVACUATION_CASES="10,40" (the default): the release counts to measure, in order.
# BENCH_EVACUATION_MODES="k8smove,drain" (the default): which of the two to run (drain does not use this package's
# code, so an A/B of two versions of the package runs it once)
MODES = tuple(m.strip() for m in os.environ.get("BENCH_EVACUATION_MODES", "k8smove,drain").split(",") if m.strip())
# BENCH_EVACUATION_PROXY_PROCESS=1 (the default): kubesim's Service proxy in a process of its own (kube-proxy's
# place), so the API server's load in this process does not hold up the requests the probes measure; 0: a thread
# of this process, as before 2026-12-03 07:40 UTC.
PROXY_PROCESS = os.environ.get("BENCH_EVACUATION_PROXY_PROCESS", "1") == "1"
CASES = tuple(int(n) for n in os.environ.get("BENCH_EVACUATION_CASES", "10,40").split(",") if n.strip())
# BENCH_CONTROL_PLANE=kubesim (the default) or real: kube-apiserver, kube-controller-manager, kube-scheduler and
# etcd built from source (issue 14), kubesim's kubelets as the nodes; a fresh control plane per case and mode.
CONTROL_PLANE = os.environ.get("BENCH_CONTROL_PLANE", "kubesim")
PROBE_BUDGET = (100.0, 20.0)          # GET/s and writes/s for all releases together, as node_maintenance's
SAMPLE_SECONDS = 0.2
RUN_TIMEOUT = 900
COMMAND = "make bench BENCH=evacuation   # or: .venv/bin/python -m bench evacuation"


def release_name(i: int) -> str:
    return f"r{i:02d}"


def external_ip(i: int) -> str:
    return external_address((2000 + os.getpid() % 1000) * 256 + i + 1)


def deploy_releases(c, count: int) -> list[dict]:
    """``count`` releases on demo=node1 through the move engine (plan, begin, wait, commit); returns the plans."""
    from k8smove.engine import begin, commit, plan_release
    from k8smove.nodes import label_nodes
    from k8smove.params import DEPLOY_PARAMS

    api = api_client(c)
    label_nodes(api, {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}})
    settings = {key: DEPLOY_PARAMS[key]["default"] for key in ("port", "images", "replicas", "storage")}
    plans = []
    for i in range(count):
        plan = plan_release(api, "default", release_name(i), {"demo": "node1"},
                            settings={**settings, "external_ip": external_ip(i)})
        begin(api, plan, "bench/deploy", 600)
        plans.append(plan)
    wait_for(lambda: len(release_pods_ready(c, "node1")) == 2 * count, 600, 0.5, f"{count} releases Ready")
    for plan in plans:
        commit(api, plan, "bench/deploy")
    return plans


def release_pods_ready(c, node: str) -> list[dict]:
    return [p for p in pods(c, "default") if p["spec"].get("nodeName") == node and pod_ready(p)
            and not p["metadata"].get("deletionTimestamp")]


class InFlight:
    """Samples how many releases are moving: a pod not Ready, or pods on more than one node."""

    def __init__(self, c):
        self.c, self.peak, self.stop = c, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            by_release: dict[str, list[dict]] = {}
            for pod in pods(self.c, "default"):
                release = (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/instance")
                if release:
                    by_release.setdefault(release, []).append(pod)
            moving = sum(1 for ps in by_release.values()
                         if len({p["spec"].get("nodeName") for p in ps}) > 1 or not all(pod_ready(p) for p in ps))
            self.peak = max(self.peak, moving)
            self.stop.wait(SAMPLE_SECONDS)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def evacuate_with_k8smove(c, count: int) -> dict:
    from kubernetes.client import CoreV1Api

    from scripts.airflow_stack import start_stack

    home = Path(tempfile.mkdtemp(prefix="bench-evacuation-airflow-"))
    stack = start_stack(home, c.kubeconfig_path, dag_ids=("node_maintenance",))
    try:
        CoreV1Api(api_client(c)).patch_node("node1", {"metadata": {"labels": {"maintenance": "scheduled"}}})
        # Warm up: the first task a fresh stack runs pays its worker's imports (~8 s here); a scheduled window
        # meets a scheduler that has been up for days.
        stack.wait_for_run("node_maintenance", warm_up(stack), RUN_TIMEOUT)
        run_id = f"bench__{count}__{int(time.time())}"
        with InFlight(c) as in_flight, TreeCpu() as cpu:
            started, triggered_at = time.monotonic(), time.time()
            response = stack.post("/dags/node_maintenance/dagRuns", {
                "dag_run_id": run_id, "logical_date": None, "conf": {"target_selector": {"demo": "node2"}}})
            if response.status_code != 200:
                raise RuntimeError(response.text)
            run = stack.wait_for_run("node_maintenance", run_id, RUN_TIMEOUT)
            polled = time.monotonic() - started
        # trigger -> the run's end as the metadata DB has it: wait_for_run polls once a second
        wall = datetime.fromisoformat(run["end_date"]).timestamp() - triggered_at
        tis = stack.task_instances("node_maintenance", run_id)
        report = json.loads((stack.report_dir / f"node_maintenance__{run_id}.json").read_text())
        releases = report["releases"]
        return {
            "state": run["state"], "wall_s": round(wall, 2), "wall_polled_s": round(polled, 2),
            "peak_in_flight": in_flight.peak, "cpu_s": cpu.shares(),
            # apache/airflow#71580's signature in the scheduler's log: a try failed on a stale executor event
            "stale_event_failures": stack.log("scheduler").count("but the task instance's state attribute is"),
            "moved": sum(1 for r in releases.values() if r.get("outcome") == "moved"),
            "sent": sum((r.get("probe") or {}).get("sent", 0) for r in releases.values()),
            "failed": sum((r.get("probe") or {}).get("failed", 0) for r in releases.values()),
            "rows_lost": sum((r.get("db") or {}).get("rows_lost", 0) for r in releases.values()),
            "writes_sent": sum(((r.get("probe") or {}).get("writes") or {}).get("sent", 0) for r in releases.values()),
            "writes_failed": sum(((r.get("probe") or {}).get("writes") or {}).get("failed", 0)
                                 for r in releases.values()),
            "not_moved": {ref: f"{r.get('outcome')}: {str(r.get('reason'))[:300]}" for ref, r in releases.items()
                          if r.get("outcome") != "moved"},
            "max_gap_ms": max(((r.get("probe") or {}).get("max_gap_ms") or 0) for r in releases.values()),
            "errors": {ref: (r.get("probe") or {}).get("errors") for ref, r in releases.items()
                       if (r.get("probe") or {}).get("failed")},
            "move_releases_s": tis["move_releases"].get("duration"),
            "failed_when": failed_when(releases, run),
            "timeline": timeline(stack, run_id, tis, run),
            "on_node1_after": len([p for p in pods(c, "default") if p["spec"].get("nodeName") == "node1"]),
            **cluster_trouble(c),
        }
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def cluster_trouble(c) -> dict:
    """What slowed the rollouts down, as the cluster says: container restarts, Warning events by reason."""
    restarts = sum(status.get("restartCount", 0) for p in pods(c, "default")
                   for status in (p.get("status") or {}).get("initContainerStatuses", []) +
                   (p.get("status") or {}).get("containerStatuses", []))
    warnings: dict[str, int] = {}
    for event in CoreV1Api(api_client(c)).list_namespaced_event("default").items:
        if event.type == "Warning":
            warnings[event.reason] = warnings.get(event.reason, 0) + (event.count or 1)
    return {"container_restarts": restarts, "warning_events": warnings}


def _seconds(stamp: str | None, origin) -> float | None:
    return round((datetime.fromisoformat(stamp) - origin).total_seconds(), 2) if stamp else None


MOVE_LOG_MARKS = ("Waiting up to", "Rollout wait ended", "deferring", ": moved;")


def timeline(stack, run_id: str, tis: dict, run: dict) -> dict:
    """Where the run's time went, in seconds from the run's start: each task's queued, start and end (from the
    metadata DB, through the REST API), and inside move_releases the first and last log line of each mark
    (the wait's start, its end, the first and last release committed)."""
    origin = datetime.fromisoformat(run["start_date"])
    tasks = {task_id: {"queued": _seconds(ti.get("queued_when"), origin), "start": _seconds(ti.get("start_date"), origin),
                       "end": _seconds(ti.get("end_date"), origin), "state": ti.get("state"),
                       "tries": ti.get("try_number")}
             for task_id, ti in tis.items()}
    marks: dict[str, list[float]] = {}
    errors: list[str] = []
    try:
        for try_number in range(1, (tis["move_releases"].get("try_number") or 1) + 1):
            entries = stack.task_log("node_maintenance", run_id, "move_releases", try_number)
            # the whole log beside the raw results (git-ignored), for what the timeline only counts
            (Path(__file__).parent / "results").mkdir(exist_ok=True)
            (Path(__file__).parent / "results" / f"evacuation-move_releases-try{try_number}.log") \
                .write_text("\n".join(json.dumps(e, default=str) for e in entries))
            for entry in entries:
                if str(entry.get("level", "")).lower() in ("error", "critical") and len(errors) < 10:
                    errors.append(f"try {try_number}: {str(entry.get('event'))[:300]}")
                mark = next((m for m in MOVE_LOG_MARKS if m in str(entry.get("event", ""))), None)
                if mark and entry.get("timestamp"):
                    marks.setdefault(mark, []).append(_seconds(entry["timestamp"], origin))
    except Exception as err:   # the timeline is a diagnostic: a log that cannot be read leaves it out
        marks["unreadable"] = [str(err)]
    return {"tasks": dict(sorted(tasks.items(), key=lambda kv: kv[1]["start"] or 1e9)),
            "move_releases": {m: [min(v), max(v)] if v and isinstance(v[0], float) else v for m, v in marks.items()},
            "move_releases_errors": errors}


def failed_when(releases: dict, run: dict) -> dict[int, int]:
    """Failed GETs of all the releases' probes by the second (from the run's start) they were sent in."""
    origin = datetime.fromisoformat(run["start_date"]).timestamp()
    seconds: dict[int, int] = {}
    for release in releases.values():
        probe = release.get("probe") or {}
        timeline = probe.get("timeline") or {}
        for index, _, failed, *_ in timeline.get("buckets") or ():
            if failed:
                second = int(probe["started_at"] + index * timeline["bucket_s"] - origin)
                seconds[second] = seconds.get(second, 0) + failed
    return dict(sorted(seconds.items()))


def warm_up(stack) -> str:
    run_id = f"warm_up__{time.time_ns()}"
    response = stack.post("/dags/node_maintenance/dagRuns", {
        "dag_run_id": run_id, "logical_date": None, "conf": {"target_selector": {"demo": "node2"}, "dry_run": True}})
    if response.status_code != 200:
        raise RuntimeError(response.text)
    return run_id


def evacuate_with_drain(c, count: int) -> dict:
    from kubernetes.client import CoreV1Api

    from k8smove import availability

    CoreV1Api(api_client(c)).patch_node("node2", {"metadata": {"labels": {"demo": "node1"}}})
    rate = PROBE_BUDGET[0] / count
    # one probe process per release, as k8smove's probe Pods: not threads of this process, which runs kubesim
    probes = [subprocess.Popen([sys.executable, availability.__file__, "--url", f"http://{external_ip(i)}:8080/",
                                "--rate", f"{rate:g}", "--write-rate", "0", "--max-seconds", str(RUN_TIMEOUT)],
                               stdout=subprocess.PIPE, text=True) for i in range(count)]
    for probe in probes:
        if "started" not in probe.stdout.readline():
            raise RuntimeError("a drain probe did not start")
    time.sleep(2)                         # a steady baseline before the drain
    kubectl = Kubectl(c)
    with InFlight(c) as in_flight, TreeCpu() as cpu:
        started = time.monotonic()
        drained = kubectl("drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=600s",
                          check=False, timeout=700)
        evicted = time.monotonic() - started
        wait_for(lambda: len(release_pods_ready(c, "node2")) == 2 * count, RUN_TIMEOUT, 0.2,
                 "every release Ready on node2")
        wall = time.monotonic() - started
    time.sleep(2)
    for probe in probes:
        probe.send_signal(signal.SIGTERM)
    summaries = [next(json.loads(line)["summary"] for line in reversed(probe.communicate(timeout=60)[0].splitlines())
                      if '"summary"' in line) for probe in probes]
    return {
        "state": "success" if drained.returncode == 0 else f"kubectl exit {drained.returncode}: {drained.stderr[-300:]}",
        "wall_s": round(wall, 2), "drain_returned_s": round(evicted, 2), "peak_in_flight": in_flight.peak,
        "cpu_s": cpu.shares(),
        "sent": sum(s["sent"] for s in summaries), "failed": sum(s["failed"] for s in summaries),
        "max_gap_ms": max(s["max_gap_ms"] or 0 for s in summaries),
        "releases_with_failures": sum(1 for s in summaries if s["failed"]),
    }


def _shares(cpu: dict) -> str:
    return ", ".join(f"{share} {seconds}" for share, seconds in cpu.items() if share != "total" and seconds >= 0.1)


def run() -> Result:
    import logging

    result = Result("Node evacuation under the real scheduler: node_maintenance vs kubectl drain", COMMAND)
    logging.getLogger("k8smove").setLevel(logging.WARNING)
    for count in CASES:
        figures = {}
        for mode, evacuate in (("k8smove", evacuate_with_k8smove), ("drain", evacuate_with_drain)):
            if mode not in MODES:
                continue
            with cluster(nodes=["node1", "node2"], node_cpu="64", node_memory="256Gi", max_pods=500,
                         pod_startup_seconds=0.5, max_grace_seconds=2.0, proxy_process=PROXY_PROCESS,
                         control_plane=CONTROL_PLANE) as c:
                setup = time.monotonic()
                deploy_releases(c, count)
                figures[mode] = {**evacuate(c, count), "setup_s": round(time.monotonic() - setup, 1)}
            print(f"{count} releases, {mode}: {figures[mode]}", flush=True)
        result.raw[str(count)] = figures
        if set(figures) != {"k8smove", "drain"}:
            continue                      # one mode only: its figures are in the raw results
        k, d = figures["k8smove"], figures["drain"]
        ratio = k["wall_s"] / d["wall_s"]
        result.add(f"{count} releases: node_maintenance, trigger -> run done", f"{k['wall_s']} s ({k['state']}, "
                   f"{k['moved']}/{count} moved, {k['on_node1_after']} pods left on node1)")
        result.add(f"{count} releases: kubectl drain -> every release Ready on node2",
                   f"{d['wall_s']} s (drain returned after {d['drain_returned_s']} s)")
        result.add(f"{count} releases: wall time per release, k8smove / drain",
                   f"{k['wall_s'] / count:.2f} s / {d['wall_s'] / count:.2f} s")
        result.add(f"{count} releases: k8smove / drain wall time", f"{ratio:.2f}x",
                   "<= 1.5x at 40 releases" if count == 40 else "", ratio <= 1.5 if count == 40 else None)
        result.add(f"{count} releases: CPU seconds of the benchmark's process tree, k8smove / drain",
                   f"{k['cpu_s']['total']} / {d['cpu_s']['total']} (k8smove: {_shares(k['cpu_s'])}; "
                   f"drain: {_shares(d['cpu_s'])})")
        cores = os.cpu_count() or 1
        result.add(f"{count} releases: k8smove's CPU seconds / {cores} cores, against 1.5x drain's wall time",
                   f"{k['cpu_s']['total'] / cores:.1f} s / {1.5 * d['wall_s']:.1f} s", "",
                   None)
        result.add(f"{count} releases: releases in flight at once (peak), k8smove / drain",
                   f"{k['peak_in_flight']} / {d['peak_in_flight']}")
        result.add(f"{count} releases: failed GETs, k8smove / drain",
                   f"{k['failed']} of {k['sent']} / {d['failed']} of {d['sent']} "
                   f"({d['releases_with_failures']} releases hit)", "0 for k8smove", k["failed"] == 0)
        result.add(f"{count} releases: longest gap, k8smove / drain", f"{k['max_gap_ms']} ms / {d['max_gap_ms']} ms")
        result.add(f"{count} releases: rows lost (k8smove)", k["rows_lost"], "0", k["rows_lost"] == 0)
    result.notes += [
        "Each release is an App and a PostgreSQL DB (Recreate, network-attached volume); k8smove moves the DB by "
        "switchover to a streaming standby (issue 11), drain stops it and starts it on node2.",
        "k8smove's figure includes Airflow's own hand-offs (plan, cordon, probes, one deferred wait for every "
        "release, evict, verify, report); drain's includes the replacements becoming Ready, which drain itself "
        "does not wait for.",
        "Drain is given node2 labelled demo=node1 so the evicted pods can run there; with the releases pinned by "
        "node_label as deployed, drain leaves every one of them Pending.",
    ]
    return result
