"""The migration report: where the pods ran before and after, what the probe saw, which rows survived.

Plain Python (the operators in operators/observe.py call it): reading placements, checking rows, and composing
the report that goes to XCom, the task log and a JSON file (the probe itself: k8smove.probe_pod).
"""
from __future__ import annotations

import json
import os
import re
import time

from k8smove import release_selector, switchover
from k8smove.kube import list_objects

REPORT_DIR_ENV = "K8SMOVE_REPORT_DIR"
REPORT_CONN_ENV = "K8SMOVE_REPORT_CONN_ID"


def pods_by_node(api, namespace: str, release: str) -> dict[str, list[str]]:
    """Node name -> names of the release's pods on it that are not terminating (unscheduled under "")."""
    placement: dict[str, list[str]] = {}
    for pod in list_objects(api, "v1", "Pod", namespace, release_selector(release)):
        if not pod["metadata"].get("deletionTimestamp"):
            placement.setdefault(pod["spec"].get("nodeName") or "", []).append(pod["metadata"]["name"])
    return {node: sorted(names) for node, names in sorted(placement.items())}


def data_check(acknowledged: list[int], present: list[int]) -> dict:
    lost = sorted(set(acknowledged) - set(present))
    return {"rows_acknowledged": len(acknowledged), "rows_present": len(present), "rows_lost": len(lost),
            "lost_ids": lost[:100]}


def report_location(environ=os.environ) -> str:
    """Where reports go: ``K8SMOVE_REPORT_DIR``, a directory or any fsspec URL (``s3://bucket/prefix``, ``gs://…``,
    ``file://…``); by default ``$AIRFLOW_HOME/k8smove-reports``. A plain path becomes a ``file://`` URL."""
    where = environ.get(REPORT_DIR_ENV) or os.path.join(
        environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"), "k8smove-reports")
    return where if "://" in where else "file://" + os.path.abspath(where)


def write_report(report: dict, dag_id: str, run_id: str, storage) -> str:
    """Write the report as JSON under ``storage`` (Airflow's ObjectStoragePath, or any path-like with ``/``,
    ``mkdir`` and ``write_text``); returns where, as a URL."""
    storage.mkdir(parents=True, exist_ok=True)
    target = storage / f"{dag_id}__{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.json"
    target.write_text(json.dumps(report, indent=2))
    return str(target)


def summary_lines(report: dict) -> list[str]:
    """The report in a few lines for the task log."""
    probe, db = report.get("probe") or {}, report.get("db") or {}
    planned = [f"would be {p['result'].removesuffix(' (dry run)')}: {p['object']}" for p in report.get("planned") or ()]
    return [
        f"outcome: {report['outcome']} in {report['duration_s']} s",
        *planned,
        f"pods before: {json.dumps(report['pods_before'])}",
        f"pods after:  {json.dumps(report['pods_after'])}",
        f"probe: {probe.get('sent')} sent, {probe.get('failed')} failed, longest gap {probe.get('max_gap_ms')} ms, "
        f"latency p50 {(probe.get('latency_ms') or {}).get('p50')} ms",
        *([f"writes: {writes.get('sent')} sent, {writes.get('failed')} failed, longest with none acknowledged "
           f"{writes.get('max_stall_ms')} ms, latency p50 {(writes.get('latency_ms') or {}).get('p50')} ms, "
           f"p99 {(writes.get('latency_ms') or {}).get('p99')} ms"] if (writes := probe.get("writes")) else []),
        *([f"DB switchover: writes paused {switch['write_pause_ms']} ms (fence {switch.get('fence_ms')} ms), "
           f"{switch['switchover_ms']} ms in all"] if (switch := report.get("db_switchover")) else []),
        f"rows: {db.get('rows_acknowledged')} acknowledged, {db.get('rows_present')} present, "
        f"{db.get('rows_lost')} lost",
        "steps: " + ", ".join(f"{task} {step['state']} {step.get('duration_s', '-')} s"
                              for task, step in report["steps"].items()),
    ]


# Steps whose failure is the move's failure (the others prove or repair it).
PROBE_STEPS = ("start_probe", "stop_probe")
ROLLBACK_STEP = "rollback"


def proof_problem(probe: dict | None, db: dict | None) -> tuple[str, str] | None:
    """What the probe saw that a moved release must not show: lost rows (data_lost), failed requests
    (disrupted); None when neither."""
    if db and db.get("rows_lost"):
        return "data_lost", f"{db['rows_lost']} acknowledged rows are missing after the move: {db['lost_ids']}"
    if probe and probe.get("failed"):
        return "disrupted", (f"{probe['failed']} of {probe['sent']} requests failed during the move "
                             f"({probe.get('errors')}; longest gap {probe.get('max_gap_ms')} ms)")
    writes = (probe or {}).get("writes") or {}
    if writes.get("failed"):
        return "disrupted", (f"{writes['failed']} of {writes['sent']} writes were not acknowledged during the move "
                             f"({writes.get('errors')}; longest with none acknowledged {writes.get('max_stall_ms')} ms)")
    return None


def migration_outcome(steps: dict[str, dict], pods_before: dict | None, pods_after: dict,
                      db: dict | None, dry_run: bool = False, moved: dict | None = None,
                      probe: dict | None = None) -> tuple[str, str | None]:
    """(outcome, reason): moved, deployed, unchanged, dry_run, refused, rolled_back, failed, unverified,
    data_lost or disrupted."""
    failed = [t for t, step in steps.items() if step["state"] in ("failed", "upstream_failed")
              and t not in PROBE_STEPS and t != ROLLBACK_STEP]
    if failed:
        first = failed[0]
        reason = steps[first].get("error") or f"task {first} ended {steps[first]['state']}"
        if first == "preflight" or (moved or {}).get("outcome") == "refused":   # refused: nothing was written
            return "refused", (moved or {}).get("reason") or reason
        if steps.get(ROLLBACK_STEP, {}).get("state") == "success":
            return "rolled_back", f"{reason} (rolled back: the release runs where it ran before)"
        return "failed", reason
    if dry_run:
        return "dry_run", None
    broken_proof = [t for t in PROBE_STEPS if t in steps and steps[t]["state"] != "success"]
    if broken_proof:
        t = broken_proof[0]
        return "unverified", steps[t].get("error") or f"task {t} ended {steps[t]['state']}"
    if problem := proof_problem(probe, db):
        return problem
    if pods_before is None:
        return "deployed", None          # a first deploy: nothing ran before, nothing was probed
    # a DB switched over by this run is a move, even when a killed try of the run had already placed the pods
    unchanged = pods_before == pods_after and not (moved or {}).get("db_switchover")
    return ("unchanged" if unchanged else "moved"), None


def compose(step_ids: list[str], states: dict[str, str], recorded: dict[str, dict], pods_before: dict | None,
            pods_after: dict, observed: dict, started, planned: list | None = None, moved: dict | None = None,
            undone: dict | None = None) -> dict:
    """The migration report (see README: "The migration report"); ``planned``: a dry run's apply results;
    ``moved``: the move task's outcome for the release ({"outcome", "reason"}); ``undone``: the rollback's."""
    steps = {t: {**(recorded.get(t) or {}), "state": states.get(t) or "none"} for t in step_ids}
    outcome, reason = migration_outcome(steps, pods_before, pods_after, observed.get("db"), dry_run=planned is not None,
                                        moved=moved, probe=observed.get("probe"))
    if outcome == "rolled_back" and (note := (undone or {}).get("note")):   # the DB was past its switch
        reason = reason.replace("(rolled back: the release runs where it ran before)", f"(rolled back, but {note})")
    return {
        "outcome": outcome, "reason": reason,
        "duration_s": round(time.time() - started.timestamp(), 3) if started else None,
        "pods_before": pods_before or {}, "pods_after": pods_after,
        "probe": observed.get("probe"), "db": observed.get("db"), "steps": steps,
        "db_switchover": (moved or {}).get("db_switchover"),
        **({"planned": planned} if planned is not None else {}),
    }


def settle_retired_claims(api, namespace: str, release: str, outcome: str | None) -> dict:
    """A switchover keeps the old DB instance's claim until the run has verified the data: removed once the release
    moved and its rows are proven ({"removed": [...]}), kept otherwise ({"kept": [...]}, for a person to look at)."""
    if outcome == "moved":
        return {"removed": switchover.remove_retired_claims(api, namespace, release)}
    return {"kept": switchover.retired_claims(api, namespace, release)}
