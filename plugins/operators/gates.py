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
