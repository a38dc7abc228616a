"""The undo of operators.move.MoveReleases: restores what the move's lock recorded."""
from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators.move import holder_of
from operators.wait_ready import RolloutWaitOperator


class RollbackReleases(RolloutWaitOperator):
    """Restore the prior state each release's lock recorded for this run, wait until it is Ready where it was,
    then release the locks. Meant for ``trigger_rule="one_failed"`` after the move: the run still ends failed,
    with the move's reason. A release this run holds no lock of (never locked, or committed) is left alone, so
    the step is safe to run again (retries) and after a worker died mid-move. XCom ``releases``: each outcome.

    :param plans: the releases' plans (the move's input)
    """

    template_fields = ("plans", "timeout_seconds")
    ui_color = "#fadbd8"

    def __init__(self, *, plans: list[dict] | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plans = plans

    def execute(self, context):
        from k8smove.engine import release_ref, roll_back

        holder = holder_of(context)
        groups, outcomes = [], {}
        for plan in self.plans or []:
            ref = release_ref(plan["namespace"], plan["release"])
            undone = roll_back(self.api, plan["namespace"], plan["release"], holder)
            if undone is None:
                continue
            self.log.info("%s: restored %s", ref, undone["restored"])
            outcomes[ref] = {"outcome": "rolled_back", "restored": undone["restored"],
                             **({"note": undone["note"]} if undone.get("note") else {})}
            if undone["workloads"]:
                groups.append({"namespace": plan["namespace"], "release": plan["release"],
                               "workloads": undone["workloads"]})
        if not outcomes:
            raise AirflowSkipException("This run holds no release's lock: nothing to roll back")
        return self.wait_for(context, groups, kwargs={"outcomes": outcomes}) if groups else \
            self.execute_complete(context, {"groups": []}, outcomes)

    def execute_complete(self, context, event: dict, outcomes: dict | None = None):
        from k8smove.engine import finish_rollback, release_ref

        outcomes = dict(self.carried(event, "outcomes", outcomes) or {})
        stuck = {release_ref(g["namespace"], g["release"]): self.not_complete(g)
                 for g in event["groups"] if g["status"] != "success"}
        for ref, outcome in outcomes.items():
            namespace, release = ref.split("/")
            if ref in stuck:
                outcomes[ref] = {**outcome, "outcome": "failed", "reason": f"rollback incomplete: {stuck[ref]}"}
            else:
                finish_rollback(self.api, namespace, release, holder_of(context))
        context["ti"].xcom_push(key="releases", value=outcomes)
        if stuck:
            raise AirflowFailException("Rollback incomplete: " + " | ".join(f"{r}: {why}" for r, why in stuck.items()))
        self.log.info("Rolled back: %s", ", ".join(outcomes))
        return outcomes
