"""Where a run stops early on purpose: the gate skips itself, so every task after it is skipped in turn and only
the all_done report still runs (and says the run stopped)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException


def within_window(run_type: str, run_after, window_minutes: int | str, now=None) -> bool:
    """A scheduled run may start only within ``window_minutes`` of its scheduled time: a maintenance window that
    Airflow missed (it was down, or just started on a Wednesday) is not caught up in business hours."""
    if str(run_type).rsplit(".", 1)[-1].lower() != "scheduled":
        return True
    if isinstance(run_after, str):
        run_after = datetime.fromisoformat(run_after)
    return (now or datetime.now(timezone.utc)) - run_after <= timedelta(minutes=int(window_minutes))


class StopIfDryRun(BaseOperator):
    """A dry run ends here (nothing after it writes)."""

    template_fields = ("dry_run",)

    def __init__(self, *, dry_run: bool | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run

    def execute(self, context):
        if self.dry_run:
            raise AirflowSkipException("Dry run: the plan is above; nothing is written")


class SkipIfWindowMissed(BaseOperator):
    """Skips the whole run when a scheduled run starts more than ``window_minutes`` after its scheduled time."""

    template_fields = ("window_minutes",)

    def __init__(self, *, window_minutes: int | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.window_minutes = window_minutes

    def execute(self, context):
        run = context["dag_run"]
        if not within_window(run.run_type, run.run_after, self.window_minutes):
            raise AirflowSkipException(
                f"Scheduled for {run.run_after}, now {datetime.now(timezone.utc)}: the window of "
                f"{self.window_minutes} minutes has passed; nothing is done (trigger the DAG by hand to run it now)")
