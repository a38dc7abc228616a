"""Where a run stops early on purpose."""
from __future__ import annotations

from airflow.providers.standard.operators.python import ShortCircuitOperator


def writes_allowed(dry_run: bool) -> bool:
    return not dry_run


class StopIfDryRun(ShortCircuitOperator):
    """A dry run ends here: with the default ``ignore_downstream_trigger_rules`` every task after it is skipped;
    with False only its direct downstream, and the rest follow their trigger rules (a report still runs)."""

    def __init__(self, *, dry_run: bool | str, **kwargs) -> None:
        super().__init__(python_callable=writes_allowed, op_kwargs={"dry_run": dry_run}, **kwargs)


def within_window(run_type: str, run_after, window_minutes: int | str, now=None) -> bool:
    """A scheduled run may start only within ``window_minutes`` of its scheduled time: a maintenance window that
    Airflow missed (it was down, or just started on a Wednesday) is not caught up in business hours."""
    from datetime import datetime, timedelta, timezone

    if str(run_type).rsplit(".", 1)[-1].lower() != "scheduled":
        return True
    if isinstance(run_after, str):
        run_after = datetime.fromisoformat(run_after)
    late = (now or datetime.now(timezone.utc)) - run_after
    if late > timedelta(minutes=int(window_minutes)):
        import logging

        logging.getLogger(__name__).warning("Scheduled for %s, now %s late: the window of %s minutes has passed; "
                                            "nothing is done (trigger the DAG by hand to run it now)",
                                            run_after, late, window_minutes)
        return False
    return True


class SkipIfWindowMissed(ShortCircuitOperator):
    """Skips the whole run when it starts more than ``window_minutes`` after its scheduled time."""

    def __init__(self, *, window_minutes: int | str, **kwargs) -> None:
        super().__init__(python_callable=within_window, op_kwargs={
            "run_type": "{{ dag_run.run_type }}", "run_after": "{{ dag_run.run_after }}",
            "window_minutes": window_minutes}, **kwargs)
