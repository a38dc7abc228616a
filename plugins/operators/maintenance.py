"""Operators of node_maintenance and end_maintenance; the logic is k8smove.maintenance's."""
from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from operators.base import KubernetesOperator
from operators.wait_ready import RolloutWaitOperator


class MaintenanceOperator(KubernetesOperator):
    """Shares the run's ``selection`` (maintenance_label, target_selector, extra_selector, ready_label,
    allow_local_storage) and plans from the cluster as it is when the task runs."""

    template_fields = ("selection",)

    def __init__(self, *, selection: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.selection = selection

    def plan(self, label_given: bool = False) -> dict:
        from k8smove.maintenance import plan_maintenance

        return plan_maintenance(self.api, **self.selection, label_given=label_given)


class PlanMaintenance(MaintenanceOperator):
    """Read the cluster and log the plan: nodes, pool, each workload's move, evictions, pods left alone.

    Writes nothing. Returns the moves (the mapped move tasks' input: only a return value can be mapped
    over); XCom keys ``plan`` (all of it), ``nodes`` and ``ready_labels``.
    """

    ui_color = "#fdebd0"

    def execute(self, context):
        from k8smove.maintenance import blocking, describe_plan
        from k8smove.preflight import check_conf_keys

        check_conf_keys(context["dag_run"].conf or {}, self.dag.params.keys())
        # a maintenance_label a person gave must mark a node; the scheduled run's default may mark none
        plan = self.plan(label_given="maintenance_label" in (context["dag_run"].conf or {}))
        self.log.info("Plan:\n%s", "\n".join(describe_plan(plan)))
        if problems := blocking(plan):   # before any write, and a dry run ends red too
            raise AirflowFailException(f"The plan cannot empty {', '.join(plan['nodes'])}: " + " | ".join(problems))
        ti = context["ti"]
        ti.xcom_push(key="plan", value={k: v for k, v in plan.items() if k != "release_plans"})
        for key in ("nodes", "ready_labels", "release_plans", "probe_targets"):
            ti.xcom_push(key=key, value=plan[key])
        return plan["moves"]


class CordonNodes(KubernetesOperator):
    """Mark ``nodes`` unschedulable (kubectl cordon); idempotent."""

    template_fields = ("nodes",)
    ui_color = "#d6eaf8"
    unschedulable = True

    def __init__(self, *, nodes: list[str] | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nodes = nodes

    def execute(self, context):
        from k8smove.maintenance import set_unschedulable

        changed = set_unschedulable(self.api, self.nodes, self.unschedulable)
        self.log.info("%s: %s (already: %s)", "Cordoned" if self.unschedulable else "Uncordoned", changed or "none",
                      sorted(set(self.nodes) - set(changed)) or "none")
        return changed


class UncordonNodes(CordonNodes):
    """Mark ``nodes`` schedulable again (kubectl uncordon); idempotent."""

    unschedulable = False


class MoveWorkload(RolloutWaitOperator):
    """Move one workload off the maintenance nodes, then wait until every pod is Ready elsewhere.

    ``surge``: server-side apply of the nodeAffinity exclusion (the Deployment rolls out surge-first);
    ``recreate``: its pods there are evicted (PodDisruptionBudgets respected) and recreated elsewhere.

    :param move: one of PlanMaintenance's ``moves``
    """

    template_fields = ("move", "timeout_seconds")
    ui_color = "#fcf3cf"

    def __init__(self, *, move: dict | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.move = move

    def execute(self, context):
        from k8smove.maintenance import apply_exclusion, evict_pods

        move = self.move
        name = f"{move['kind']} {move['namespace']}/{move['name']}"
        if move["mode"] == "surge":
            apply_exclusion(self.api, move)
            self.log.info("%s: applied the exclusion of %s; rolling out surge-first", name, move["avoid_nodes"])
        else:
            pods = [dict(zip(("namespace", "name"), ref.split("/"))) for ref in move["pods"]]
            evicted = evict_pods(self.api, pods, int(self.timeout_seconds))
            if evicted["blocked"]:
                raise AirflowFailException(f"{name}: eviction refused: " + "; ".join(
                    f"{pod}: {reason}" for pod, reason in evicted["blocked"].items()))
            self.log.info("%s: evicted %s; recreated elsewhere", name, evicted["evicted"])
        return self.wait_for(context, [{"namespace": move["namespace"], "release": None, "workloads": [
            {"kind": move["kind"], "name": move["name"], "node_selector": move["node_selector"],
             "avoid_nodes": move["avoid_nodes"]}]}])

    def execute_complete(self, context, event: dict):
        from k8smove.maintenance import undo_exclusion

        if event["groups"][0]["status"] != "success" and self.move["mode"] == "surge" and \
                undo_exclusion(self.api, self.move):
            # Fully back, not half-moved: the Deployment returns to its running pods, its Pending surge pod goes.
            self.log.warning("%s %s/%s did not move: its exclusion is lifted again", self.move["kind"],
                             self.move["namespace"], self.move["name"])
        return super().execute_complete(context, event)


class EvictPods(MaintenanceOperator):
    """Evict the pods left on the nodes through the Eviction API, retrying what a PodDisruptionBudget refuses
    for ``eviction_timeout_seconds``; never forces. Returns {"evicted", "blocked": {pod: reason}}."""

    template_fields = ("selection", "eviction_timeout_seconds")
    ui_color = "#fadbd8"

    def __init__(self, *, eviction_timeout_seconds: int | str = 120, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eviction_timeout_seconds = eviction_timeout_seconds

    def execute(self, context):
        from k8smove.maintenance import describe_missing_rights, evict_pods, wait_until_gone

        plan = self.plan()
        if missing := describe_missing_rights(plan["missing_rights"]):   # a namespace new since the plan task
            raise AirflowFailException("Not evicting: " + " | ".join(missing))
        result = evict_pods(self.api, plan["evict"], int(self.eviction_timeout_seconds))
        for pod, reason in result["blocked"].items():
            self.log.warning("Not evicted (not forced): %s: %s", pod, reason)
        for pod in plan["untouched"]:
            self.log.warning("Left alone: %s on %s: %s", pod["pod"], pod["node"], pod["reason"])
        wait_until_gone(self.api, result["evicted"], plan["nodes"], int(self.eviction_timeout_seconds))
        return result


class VerifyNodesEmpty(MaintenanceOperator):
    """Fail with every pod still keeping a maintenance node busy and why; DaemonSet and mirror pods do not.

    :param drained: EvictPods' result
    """

    template_fields = ("selection", "drained")
    ui_color = "#ebdef0"

    def __init__(self, *, drained: dict | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.drained = drained

    def execute(self, context):
        from k8smove.maintenance import pods_on_nodes, what_is_left

        plan = self.plan()
        if left := what_is_left(plan, pods_on_nodes(self.api, plan["nodes"]), self.drained or {}):
            raise AirflowFailException(f"{len(left)} pod(s) left on the maintenance node(s): " + "; ".join(left))
        self.log.info("Empty: %s", plan["nodes"] or "no node marked for maintenance")
        return plan["nodes"]


class SelectMaintenanceNodes(KubernetesOperator):
    """Nodes labelled ``maintenance_label``; XCom ``nodes`` and ``unlabel`` (node -> its removal, LabelNodes').
    Fails, before end_maintenance writes anything, when it may not lift an exclusion of those nodes somewhere."""

    template_fields = ("maintenance_label",)
    ui_color = "#fdebd0"

    def __init__(self, *, maintenance_label: dict | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.maintenance_label = maintenance_label

    def execute(self, context):
        from k8smove import kube
        from k8smove.labels import matches
        from k8smove.maintenance import describe_missing_rights, missing_lift_rights

        nodes = sorted(n["metadata"]["name"] for n in kube.list_objects(self.api, "v1", "Node")
                       if matches(self.maintenance_label, n["metadata"].get("labels")))
        self.log.info("Nodes to bring back: %s", nodes or "none")
        if missing := describe_missing_rights(missing_lift_rights(self.api, nodes) if nodes else []):
            raise AirflowFailException(f"Cannot lift the exclusions of {', '.join(nodes)}: " + " | ".join(missing))
        ti = context["ti"]
        ti.xcom_push(key="nodes", value=nodes)
        ti.xcom_push(key="unlabel", value={n: {f"{key}-": None for key in self.maintenance_label} for n in nodes})
        return nodes


class LiftExclusions(KubernetesOperator):
    """Remove ``nodes`` from the nodeAffinity exclusions node_maintenance applied (a surge-first rollout)."""

    template_fields = ("nodes",)
    ui_color = "#d5f5e3"

    def __init__(self, *, nodes: list[str] | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nodes = nodes

    def execute(self, context):
        from k8smove.maintenance import lift_exclusions

        lifted = lift_exclusions(self.api, self.nodes)
        self.log.info("Exclusion of %s lifted from: %s", self.nodes, lifted or "none")
        return lifted
