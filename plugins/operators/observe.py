"""Operators that watch a move from the outside: the availability probe (setup/teardown) and the report."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from airflow.sdk.exceptions import AirflowFailException

from operators.base import KubernetesOperator


def record_step(context) -> None:
    """on_success/on_failure callback: each step's state, duration and error as XCom ``step`` for the report."""
    ti = context["ti"]
    error = context.get("exception")
    step, now = {"state": "failed" if error else "success"}, datetime.now(timezone.utc)
    if ti.start_date:
        step["duration_s"] = round((now - ti.start_date).total_seconds(), 3)
        step["started_at"], step["ended_at"] = ti.start_date.isoformat(), now.isoformat()   # the report's timeline
    if error:
        step["error"] = f"{type(error).__name__}: {error}"[:4000]
    ti.xcom_push(key="step", value=step)


class StartProbe(KubernetesOperator):
    """Record where each release's pods run, then start its availability probe (GET at ``rate``/s, row writes at
    ``write_rate``/s) as a Pod in the release's namespace (k8smove.probe_pod); it stops by itself after
    ``max_seconds``, and any worker can stop it. A dry run starts no probe: nothing moves, and the probe's rows
    would be writes to the app's database.

    :param targets: [{namespace, release, url, avoid_nodes}] (PlanRelease's or the maintenance plan's ``probe_targets``)
    :param budget: (GET/s, writes/s) for all the probes together, split evenly (never above ``rate`` and
        ``write_rate`` each): forty releases probed at full rate would load the machine they measure
    """

    template_fields = ("targets", "rate", "write_rate", "max_seconds", "dry_run")
    ui_color = "#d6eaf8"

    def __init__(self, *, targets: list[dict] | str, rate: float = 20.0, write_rate: float = 5.0,
                 max_seconds: float | str = 3600, dry_run: bool | str = False,
                 budget: tuple[float, float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.targets = targets
        self.rate = rate
        self.write_rate = write_rate
        self.max_seconds = max_seconds
        self.dry_run = dry_run
        self.budget = budget

    def rates(self, count: int) -> tuple[float, float]:
        rate, write_rate = float(self.rate), float(self.write_rate)
        if self.budget and count:
            rate, write_rate = min(rate, self.budget[0] / count), min(write_rate, self.budget[1] / count)
        return rate, write_rate

    def execute(self, context):
        from k8smove import probe_pod
        from k8smove.engine import release_ref
        from k8smove.parallel import in_parallel
        from k8smove.report import pods_by_node

        import threading

        ti, asking = context["ti"], threading.Lock()   # one question at a time on the task's channel to Airflow
        rate, write_rate = self.rates(len(self.targets or []))
        targets = list(self.targets or [])

        def run_over(dag_id, run_id) -> bool:
            """Whether the run that started a leftover probe has ended (or is unknown): then its probe is ours
            to remove."""
            try:
                with asking:
                    return ti.get_dagrun_state(dag_id=dag_id, run_id=run_id) not in ("queued", "running")
            except Exception:   # no such run (deleted), or no answer: the probe ends by itself either way
                self.log.info("the run %s of %s that left a probe is unknown; removing its probe", run_id, dag_id)
                return True

        def start(target):
            ref = release_ref(target["namespace"], target["release"])
            pods_before = pods_by_node(self.api, target["namespace"], target["release"])
            handle = None if self.dry_run else probe_pod.start(
                self.api, target["namespace"], target["release"], ti.dag_id, context["run_id"], target["url"],
                rate, write_rate, float(self.max_seconds), run_over, target.get("avoid_nodes") or ())
            self.log.info("%s: pods before %s; %s", ref, pods_before,
                          f"probe Pod {handle['pod']} on {target['url']}" + (
                              f" (removed a crashed run's probes: {handle['removed_leftovers']})"
                              if handle["removed_leftovers"] else "") if handle else "no probe")
            return ref, pods_before, handle

        started = in_parallel(start, targets)
        return {"probes": {ref: handle for ref, _, handle in started if handle},
                "pods_before": {ref: pods_before for ref, pods_before, _ in started}}


class StopProbe(KubernetesOperator):
    """Stop each probe Pod, read its figures and check every acknowledged row can be read back through the app.

    Returns {"releases": {ref: {"probe", "db", "pods_before"}}}.
    """

    template_fields = ("probe",)
    ui_color = "#d6eaf8"

    def __init__(self, *, probe: dict | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probe = probe

    def execute(self, context):
        from k8smove import probe_pod
        from k8smove.availability import rows_present
        from k8smove.parallel import in_parallel
        from k8smove.report import data_check

        def stop(ref):
            pods_before, handle = self.probe["pods_before"][ref], self.probe["probes"].get(ref)
            if handle is None:   # a dry run, or a release that did not exist yet, started none
                return {"probe": None, "db": None, "pods_before": pods_before}
            summary = probe_pod.stop(self.api, handle)
            acknowledged = summary["writes"].pop("acknowledged")
            db = data_check(acknowledged, rows_present(handle["url"]) if acknowledged else [])
            self.log.info("%s probe: %s sent, %s failed (%s), longest gap %s ms; rows %s", ref, summary["sent"],
                          summary["failed"], summary.get("errors"), summary["max_gap_ms"], db)
            return {"probe": summary, "db": db, "pods_before": pods_before}
        refs = list(self.probe["pods_before"])
        releases = dict(zip(refs, in_parallel(stop, refs)))
        in_parallel(lambda handle: probe_pod.forget(self.api, handle), list(self.probe["probes"].values()))
        return {"releases": releases}


def report_storage():
    """The reports' ObjectStoragePath (k8smove.report.report_location; ``K8SMOVE_REPORT_CONN_ID``: the connection
    of its storage, e.g. aws_default for s3://), so any worker of a distributed executor writes to one place."""
    import os

    from airflow.sdk import ObjectStoragePath

    from k8smove.report import REPORT_CONN_ENV, report_location

    return ObjectStoragePath(report_location(), conn_id=os.environ.get(REPORT_CONN_ENV))


class MigrationReport(KubernetesOperator):
    """The run's last word: pods before/after, probe figures, rows, each step; fails the run unless it moved.

    Runs whatever happened upstream (``all_done``) and is the DAG's only leaf, so the run's state is its
    state: success when the move (or a no-op) succeeded, failed with the first failure's reason otherwise.
    """

    template_fields = ("namespace", "release", "steps", "observed", "planned")
    ui_color = "#d5f5e3"

    def __init__(self, *, namespace: str, release: str, steps: list[str], observed: dict | str | None,
                 planned: list | str | None = None, **kwargs) -> None:
        super().__init__(trigger_rule="all_done", retries=0, **kwargs)
        self.namespace = namespace
        self.release = release
        self.steps = steps
        self.observed = observed
        self.planned = planned   # a dry run's apply results: what the move would change

    def execute(self, context):
        from k8smove.engine import release_ref
        from k8smove.report import compose, pods_by_node, settle_retired_claims, summary_lines, write_report

        ti, run_id = context["ti"], context["run_id"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(self.steps), run_ids=[run_id])[run_id]
        recorded = {task: ti.xcom_pull(task_ids=task, key="step") for task in self.steps}
        ref = release_ref(self.namespace, self.release)
        observed = ((self.observed or {}).get("releases") or {}).get(ref) or {}
        moved = (ti.xcom_pull(task_ids="move", key="releases") or {}).get(ref)
        report = compose(
            self.steps, states, {task: step for task, step in recorded.items() if step},
            pods_before=observed.get("pods_before"),
            pods_after=pods_by_node(self.api, self.namespace, self.release),
            observed=observed, started=context["dag_run"].start_date, planned=self.planned or None, moved=moved,
            undone=(ti.xcom_pull(task_ids="rollback", key="releases") or {}).get(ref))
        report["release"] = ref
        report["retired_claims"] = settle_retired_claims(self.api, self.namespace, self.release, report["outcome"])
        report["report_file"] = write_report(report, ti.dag_id, run_id, report_storage())
        for line in summary_lines(report):
            self.log.info(line)
        if report["outcome"] not in ("moved", "deployed", "unchanged", "dry_run"):   # disrupted, data_lost, ...
            ti.xcom_push(key="return_value", value=report)   # the run's Migration report tab shows a failure too
            raise AirflowFailException(f"Migration {report['outcome']}: {report['reason']}")
        return report


class MaintenanceReport(KubernetesOperator):
    """The maintenance run's last word: each release's outcome with its probe figures and rows, each other
    workload's move, the evictions, each step; fails the run unless every step succeeded (or a dry run stopped).

    :param observed: StopProbe's result; the releases' outcomes come from the move_releases/rollback_releases XCom
    """

    template_fields = ("steps", "observed")
    ui_color = "#d5f5e3"

    def __init__(self, *, steps: list[str], observed: dict | str | None, **kwargs) -> None:
        super().__init__(trigger_rule="all_done", retries=0, **kwargs)
        self.steps = steps
        self.observed = observed

    def execute(self, context):
        from k8smove.parallel import in_parallel
        from k8smove.report import pods_by_node, proof_problem, settle_retired_claims, write_report

        ti, run_id = context["ti"], context["run_id"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(self.steps), run_ids=[run_id])[run_id]
        moved = ti.xcom_pull(task_ids="move_releases", key="releases") or {}
        undone = ti.xcom_pull(task_ids="rollback_releases", key="releases") or {}
        observed = (self.observed or {}).get("releases") or {}

        def settle(ref: str) -> dict:
            namespace, release = ref.split("/")
            outcome = {**moved.get(ref, {}), **undone.get(ref, {})}
            if outcome.get("outcome") == "rolled_back":
                outcome["reason"] = moved.get(ref, {}).get("reason")
            seen = observed.get(ref, {})
            if outcome.get("outcome") == "moved" and (problem := proof_problem(seen.get("probe"), seen.get("db"))):
                outcome["outcome"], outcome["reason"] = problem
            return {**outcome, **seen, "pods_after": pods_by_node(self.api, namespace, release),
                    "retired_claims": settle_retired_claims(self.api, namespace, release, outcome.get("outcome"))}
        refs = sorted(set(moved) | set(undone) | set(observed))
        releases = dict(zip(refs, in_parallel(settle, refs)))   # each release's reads and deletes on its own
        failed = [t for t in self.steps if states.get(t) in ("failed", "upstream_failed")]
        unproven = sorted(ref for ref, r in releases.items() if r.get("outcome") in ("disrupted", "data_lost"))
        reasons = ([f"failed: {', '.join(failed)}"] if failed else []) + [
            f"{ref} {releases[ref]['outcome']}: {releases[ref]['reason']}" for ref in unproven]
        report = {
            "outcome": "failed" if failed or unproven else (
                "done" if states.get("mark_ready") == "success" else "stopped"),
            "reason": "; ".join(reasons) or None,
            "nodes": ti.xcom_pull(task_ids="plan", key="nodes"), "releases": releases,
            "workloads": ti.xcom_pull(task_ids="move"), "evicted": ti.xcom_pull(task_ids="evict"),
            # the other workloads' moves as planned (each a mapped `move`), and what the plan left where it was
            "workload_moves": [{"workload": f"{m['kind']} {m['namespace']}/{m['name']}", "mode": m["mode"],
                                "pods": m["pods"]} for m in ti.xcom_pull(task_ids="plan") or []],
            "refused": ((ti.xcom_pull(task_ids="plan", key="plan") or {}).get("refused")),
            "steps": {t: states.get(t) or "none" for t in self.steps},
            # each step's start and end (record_step), for the report page's timeline
            "step_times": {t: {**step, "state": states.get(t) or "none"} for t in self.steps
                           if isinstance(step := ti.xcom_pull(task_ids=t, key="step"), dict)},
        }
        report["report_file"] = write_report(report, ti.dag_id, run_id, report_storage())
        self.log.info("Maintenance %s; releases: %s", report["outcome"], json.dumps(releases, default=str)[:4000])
        if failed or unproven:
            ti.xcom_push(key="return_value", value=report)   # the run's Migration report tab shows a failure too
            raise AirflowFailException(f"Maintenance failed: {report['reason']}; releases: " + "; ".join(
                f"{ref} {r.get('outcome')}" + (f" ({r['reason']})" if r.get("reason") else "")
                for ref, r in releases.items()))
        return report
