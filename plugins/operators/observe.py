"""Operators that watch a move from the outside: the availability probe (setup/teardown) and the report."""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from operators.base import KubernetesOperator


def record_step(context) -> None:
    """on_success/on_failure callback: each step's state, duration and error as XCom ``step`` for the report."""
    ti = context["ti"]
    error = context.get("exception")
    step = {"state": "failed" if error else "success"}
    if ti.start_date:
        step["duration_s"] = round((datetime.now(timezone.utc) - ti.start_date).total_seconds(), 3)
    if error:
        step["error"] = f"{type(error).__name__}: {error}"[:4000]
    ti.xcom_push(key="step", value=step)


class StartProbe(KubernetesOperator):
    """Record where the release's pods run, then start the availability probe (GET at ``rate``/s, row writes
    at ``write_rate``/s) in its own process; it stops by itself after ``max_seconds``. A dry run starts no
    probe: nothing moves, and the probe's rows would be writes to the app's database."""

    template_fields = ("url", "namespace", "release", "rate", "write_rate", "max_seconds", "dry_run")
    ui_color = "#d6eaf8"

    def __init__(self, *, url: str, namespace: str, release: str, rate: float = 20.0, write_rate: float = 5.0,
                 max_seconds: float | str = 3600, dry_run: bool | str = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.namespace = namespace
        self.release = release
        self.rate = rate
        self.write_rate = write_rate
        self.max_seconds = max_seconds
        self.dry_run = dry_run

    def execute(self, context):
        from k8smove.report import pods_by_node, start_probe

        pods_before = pods_by_node(self.api, self.namespace, self.release)
        if self.dry_run:
            self.log.info("Pods before: %s; dry run: no probe", pods_before)
            return {"pods_before": pods_before}
        handle = start_probe(self.url, float(self.rate), float(self.write_rate), float(self.max_seconds))
        self.log.info("Pods before: %s; probe pid %s on %s", pods_before, handle["pid"], self.url)
        return {**handle, "pods_before": pods_before}


class StopProbe(BaseOperator):
    """Stop the probe and check every acknowledged row can be read back through the app."""

    template_fields = ("probe",)
    ui_color = "#d6eaf8"

    def __init__(self, *, probe: dict | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probe = probe

    def execute(self, context):
        from k8smove.availability import rows_present
        from k8smove.report import data_check, stop_probe

        if "pid" not in self.probe:   # a dry run started none
            return {"probe": None, "db": None, "pods_before": self.probe["pods_before"]}
        summary = stop_probe(self.probe)
        acknowledged = summary["writes"].pop("acknowledged")
        db = data_check(acknowledged, rows_present(self.probe["url"]) if acknowledged else [])
        self.log.info("Probe: %s sent, %s failed, longest gap %s ms; rows %s", summary["sent"], summary["failed"],
                      summary["max_gap_ms"], db)
        return {"probe": summary, "db": db, "pods_before": self.probe["pods_before"]}


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
        from k8smove.report import compose, pods_by_node, summary_lines, write_report

        ti, run_id = context["ti"], context["run_id"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(self.steps), run_ids=[run_id])[run_id]
        recorded = {task: ti.xcom_pull(task_ids=task, key="step") for task in self.steps}
        report = compose(
            self.steps, states, {task: step for task, step in recorded.items() if step},
            pods_before=(self.observed or {}).get("pods_before"),
            pods_after=pods_by_node(self.api, self.namespace, self.release),
            observed=self.observed or {}, started=context["dag_run"].start_date, planned=self.planned or None)
        report["report_file"] = write_report(report, ti.dag_id, run_id)
        for line in summary_lines(report):
            self.log.info(line)
        if report["outcome"] not in ("moved", "unchanged", "dry_run"):
            raise AirflowFailException(f"Migration {report['outcome']}: {report['reason']}")
        return report
