"""The tasks every DAG that changes where a release runs shares: probe, move, rollback, report."""
from __future__ import annotations

from operators.move import MoveReleases
from operators.observe import MigrationReport, StartProbe, StopProbe
from operators.rollback import RollbackReleases

MOVE_RETRIES = 2          # a lost worker, an API hiccup, Airflow failing a resumed deferred task (#71580)
RETRY_DELAY_SECONDS = 2


def release_move_tasks(plan, before=()):
    """Wire start_probe (setup) -> move -> rollback (one_failed) -> stop_probe (teardown) -> report after
    ``plan`` (a PlanRelease) and the tasks ``before``; returns the report, the run's only leaf."""
    from datetime import timedelta

    retry = {"retries": MOVE_RETRIES, "retry_delay": timedelta(seconds=RETRY_DELAY_SECONDS)}
    start_probe = StartProbe(
        task_id="start_probe",
        targets=plan.output["probe_targets"],
        max_seconds="{{ params.timeout_seconds * 2 + 120 }}",   # outlives the move and a rollback, never the run
        dry_run="{{ params.dry_run }}",
    ).as_setup()
    move = MoveReleases(task_id="move", plans=plan.output, dry_run="{{ params.dry_run }}",
                        timeout_seconds="{{ params.timeout_seconds }}", **retry)
    rollback = RollbackReleases(task_id="rollback", plans=plan.output, timeout_seconds="{{ params.timeout_seconds }}",
                                trigger_rule="one_failed", **retry)
    stop_probe = StopProbe(task_id="stop_probe", probe=start_probe.output).as_teardown(setups=start_probe)
    steps = [plan, *before, start_probe, move, rollback, stop_probe]
    report = MigrationReport(
        task_id="report",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        steps=[t.task_id for t in steps],
        observed=stop_probe.output,
        planned="{{ ti.xcom_pull(task_ids='move') if params.dry_run else None }}",
    )
    previous = plan
    for task in before:
        previous = previous >> task
    previous >> start_probe
    start_probe >> move >> rollback >> stop_probe
    move >> stop_probe
    # Not start_probe itself: a setup task's direct downstream tasks must be all_success ones.
    [t for t in steps if t is not start_probe] >> report
    return report
