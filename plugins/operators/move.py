"""Operators of the move engine (k8smove.engine): plan a release's move, then move it — one code path for
deploy_app, migrate_app and node_maintenance."""
from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from operators.base import KubernetesOperator
from operators.wait_ready import RolloutWaitOperator


def holder_of(context) -> str:
    """Who holds a release's lock: the DAG run, so the retries of its tasks hold it too."""
    return f"{context['dag'].dag_id}/{context['run_id']}"


class PlanRelease(KubernetesOperator):
    """Check the conf against the cluster before anything is written and plan the release's move.

    A deploy passes ``settings`` (the render values besides namespace/release/node_label) and ``label_nodes``;
    a migration passes neither, and the release's recorded values and current placement are read from the
    cluster. Returns [plan] (the move's input: the rendered manifests and every fact they were checked
    against); XCom ``service_url``, and ``probe_targets``: the release to probe while it moves ([] for a first
    deploy: nothing answers yet).

    :param node_label: target node selector
    :param components: components to place (default both)
    :param db_strategy: how a DB that changes nodes moves (k8smove.engine.plan_release)
    """

    template_fields = ("namespace", "release", "node_label", "components", "settings", "label_nodes", "db_strategy")
    ui_color = "#fdebd0"

    def __init__(self, *, namespace: str, release: str, node_label: dict | str,
                 components: list[str] | str = ("app", "db"), settings: dict | str | None = None,
                 label_nodes: dict | str | None = None, db_strategy: str = "switchover", **kwargs) -> None:
        super().__init__(**kwargs)
        self.db_strategy = db_strategy
        self.namespace = namespace
        self.release = release
        self.node_label = node_label
        self.components = components
        self.settings = settings
        self.label_nodes = label_nodes

    def execute(self, context):
        from airflow.sdk.configuration import conf

        from k8smove.engine import describe, plan_release, probe_target
        from k8smove.preflight import EXTERNAL_IP_RANGES, check_conf_keys

        # The DAG's declared params: context["params"] also holds whatever keys the conf added.
        check_conf_keys(context["dag_run"].conf or {}, self.dag.params.keys())
        # [k8smove] external_ip_ranges (AIRFLOW__K8SMOVE__EXTERNAL_IP_RANGES): where a Service's address may be
        ranges = conf.get("k8smove", "external_ip_ranges", fallback=EXTERNAL_IP_RANGES)
        plan = plan_release(self.api, self.namespace, self.release, self.node_label, self.components,
                            settings=self.settings, label_nodes=self.label_nodes, db_strategy=self.db_strategy,
                            external_ip_ranges=ranges)
        self.log.info("Plan: %s", describe(plan))
        ti = context["ti"]
        ti.xcom_push(key="service_url", value=plan["service_url"])
        ti.xcom_push(key="probe_targets", value=[probe_target(plan)] if plan["existing"] else [])
        return [plan]


class MoveReleases(RolloutWaitOperator):
    """Move releases as their plans say: lock each, apply, wait for every rollout in one deferral, then prove
    each move and commit it (recorded values written, lock released); while the worker waits, each release is
    proven and committed as soon as its own rollout completes.

    A release whose lock another run holds, or whose rollout or proof fails, ends this task failed (no retry:
    it would wait as long again) with each reason; the rollback task undoes what this run changed. Any other
    error (the API unreachable, the worker lost, Airflow failing a resumed task) is retried: every step is safe
    to run again for the same run. XCom ``releases``: each release's outcome and reason. With ``dry_run`` the
    API server only says what the apply would change (dryRun=All): no lock, nothing persisted; returns that.

    :param plans: PlanRelease's (or the maintenance plan's) release plans
    """

    template_fields = ("plans", "dry_run", "timeout_seconds")
    ui_color = "#fcf3cf"

    def __init__(self, *, plans: list[dict] | str, dry_run: bool | str = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plans = plans
        self.dry_run = dry_run

    def execute(self, context):
        from airflow.sdk.log import mask_secret

        from k8smove import K8sMoveError
        from k8smove.apply import apply_manifests
        from k8smove.engine import begin, release_ref, wait_group
        from k8smove.parallel import in_parallel

        if self.dry_run:
            return [result for plan in self.plans for result in
                    apply_manifests(self.api, plan["manifests"], dry_run=True, on_secret=mask_secret)]
        holder, outcomes, groups = holder_of(context), {}, []

        def start(plan):
            try:
                return begin(self.api, plan, holder, int(self.timeout_seconds), on_secret=mask_secret)
            except K8sMoveError as err:
                return err
        for plan, started in zip(self.plans, in_parallel(start, self.plans)):
            ref = release_ref(plan["namespace"], plan["release"])
            if isinstance(started, K8sMoveError):
                outcomes[ref] = {"outcome": "refused", "reason": str(started)}
                self.log.error("%s: %s", ref, started)
                continue
            if "committed" in started:   # Airflow ran this try after an earlier one had finished the move
                outcomes[ref] = {"outcome": "moved", **started["committed"]}
                self.log.warning("%s: an earlier try of this run committed the move already; nothing to do", ref)
                continue
            self.log.info("%s: %s%s", ref, started["applied"],
                          f"; undid an expired holder's move first: {started['recovered']}" if started["recovered"]
                          else "")
            groups.append(wait_group(plan))
        if not groups:
            return self.execute_complete(context, {"groups": []}, outcomes)

        def commit_when_ready(group):   # each release's switchover and proof while the others still roll out
            outcomes[release_ref(group["namespace"], group["release"])] = self.commit_release(context, group)
        return self.wait_for(context, groups, kwargs={"outcomes": outcomes}, on_ready=commit_when_ready)

    def commit_release(self, context, group: dict) -> dict:
        """One release after its rollout wait: prove and commit the move (its DB switched over first), or why not."""
        from k8smove import K8sMoveError
        from k8smove.engine import commit, release_ref

        ref = release_ref(group["namespace"], group["release"])
        if group["status"] != "success":
            return {"outcome": "failed", "reason": self.not_complete(group)}
        plan = next(p for p in self.plans if release_ref(p["namespace"], p["release"]) == ref)
        try:
            done = commit(self.api, plan, holder_of(context))
        except K8sMoveError as err:
            return {"outcome": "failed", "reason": str(err)}
        self.log.info("%s: moved; %s answered %s", ref, plan["service_url"], done["endpoint"]["body"])
        return {"outcome": "moved", **done["outcome"]}

    def execute_complete(self, context, event: dict, outcomes: dict | None = None):
        from k8smove.engine import release_ref
        from k8smove.parallel import in_parallel

        # the releases committed while the worker waited are carried in; the event holds the others
        outcomes = dict(self.carried(event, "outcomes", outcomes) or {})
        committed = in_parallel(lambda group: self.commit_release(context, group), event["groups"])
        for group, outcome in zip(event["groups"], committed):
            outcomes[release_ref(group["namespace"], group["release"])] = outcome
        context["ti"].xcom_push(key="releases", value=outcomes)
        if failed := {ref: o for ref, o in outcomes.items() if o["outcome"] != "moved"}:
            raise AirflowFailException(" | ".join(f"{ref} {o['outcome']}: {o['reason']}" for ref, o in failed.items()))
        return outcomes
