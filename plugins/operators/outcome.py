from __future__ import annotations

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException


class FailRunIfAnyFailed(BaseOperator):
    """Airflow's "watcher" pattern: with a rollback as the only leaf, a run whose rollback succeeded (or was
    skipped) would be marked successful; this leaf runs only when an upstream task failed, and fails the run."""

    ui_color = "#f5b7b1"

    def __init__(self, *, trigger_rule: str = "one_failed", retries: int = 0, **kwargs) -> None:
        super().__init__(trigger_rule=trigger_rule, retries=retries, **kwargs)

    def execute(self, context):
        raise AirflowFailException(
            "The run failed: see the failed task's log for the reason (a rollback task, if one ran, "
            "restored the state recorded before the apply)")
