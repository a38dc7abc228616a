from __future__ import annotations

from airflow.sdk.exceptions import AirflowSkipException

from operators.wait_ready import RolloutWaitOperator


class Rollback(RolloutWaitOperator):
    """Restore the prior state ApplyResources recorded, then wait until it is Ready where it was.

    Meant for ``trigger_rule="one_failed"`` after the apply: the run still ends failed (the failed task
    stays failed), with the original reason in that task's log. Skips when the apply recorded nothing.

    :param prior_state: ApplyResources' ``prior_state`` XCom
    """

    template_fields = ("namespace", "release", "prior_state", "timeout_seconds")
    ui_color = "#fadbd8"

    def __init__(self, *, prior_state: list[dict] | str | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prior_state = prior_state

    def execute(self, context):
        from k8smove.apply import restore_prior_state
        from k8smove.rollout import workloads_in

        if not self.prior_state:
            raise AirflowSkipException("The apply did not run: nothing to roll back")
        results = restore_prior_state(self.api, self.prior_state)
        self.log.info("Rolled back: %s", results)
        return self.wait_for(workloads_in([e["object"] for e in self.prior_state if "object" in e]))
