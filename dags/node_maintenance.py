"""
### node_maintenance

Empty the nodes marked for maintenance (label `maintenance_label`, default `maintenance=scheduled`) without
disruption, then label them `ready_label` (default `maintenance=ready`). Runs on a schedule (Saturday 02:00 UTC;
env `K8SMOVE_MAINTENANCE_SCHEDULE` overrides the cron when the DAG is parsed) and by hand with conf.

1. **plan** — reads the cluster, logs which workload goes where and what is evicted; writes nothing.
   With `dry_run` the run stops here (**stop_if_dry_run**).
2. **cordon** the nodes.
3. **move_releases** — every release k8smove deployed with pods there moves whole (App and DB) through the move
   engine `migrate_app` uses: its lock, the apply, one deferred wait for all of them, the proof, the recorded
   values; **rollback_releases** undoes a release whose move failed; **start_probe**/**stop_probe** measure each
   release from outside (GET and row writes). A release goes to its `node_label` with `target_selector`'s keys
   replaced (`{"demo": "node2"}` moves a release on demo=node1 to demo=node2), or where `release_targets` says.
   **move** — one mapped task per other workload with pods there (`app.kubernetes.io/managed-by=k8smove`, and
   those `extra_selector` picks), in parallel: Deployments surge-first (a server-side applied nodeAffinity
   `kubernetes.io/hostname NotIn [nodes]`, the app's own placement kept; lifted again if the move fails),
   StatefulSets and Recreate Deployments by eviction (recreated elsewhere on their network-attached volume).
4. **evict** every other pod through the Eviction API (PodDisruptionBudgets respected, nothing forced);
   DaemonSet and mirror pods stay.
5. **verify_nodes_empty** — fails the run listing each pod left and why; else 6. **mark_ready**.
7. **report** — each release's outcome, probe figures and rows, each workload's move; the run's only leaf.

The plan refuses, before any write (a dry run too ends failed), what cannot leave: a workload on a node-local
volume, with nowhere to go, a release with no target, a pod with emptyDir data (unless `allow_local_storage`)
or without a controller; and a namespace where it may not patch the Deployments or evict the pods it would (in
the cluster: apply `include/rbac/namespace/` there, as the refusal says). A scheduled run that starts more than 120 minutes late (env
`K8SMOVE_MAINTENANCE_WINDOW_MINUTES`) does nothing (**within_window**): a missed window is not caught up.

A failed run leaves the nodes cordoned and labelled `maintenance=scheduled`: bring them back with
**end_maintenance** and `{"maintenance_label": {"maintenance": "scheduled"}}`.

Bring the nodes back with **end_maintenance**. Example conf: `{"target_selector": {"demo": "node2"}, "dry_run": true}`.
In the trigger form, paste JSON objects with double quotes, as here, into their editors, or paste the whole conf
under Advanced Options → Configuration JSON: typed in, JSON comes out mangled (the editor inserts a closing
quote or brace for each opening one you type).
"""
import os

from airflow.sdk import DAG, chain

from k8smove.params import NODE_MAINTENANCE_PARAMS
from operators.gates import SkipIfWindowMissed, StopIfDryRun
from operators.label_nodes import LabelNodes
from operators.maintenance import CordonNodes, EvictPods, MoveWorkload, PlanMaintenance, VerifyNodesEmpty
from operators.move import MoveReleases
from operators.observe import MaintenanceReport, StartProbe, StopProbe
from operators.params import dag_params
from operators.release_move import MOVE_RETRIES, RETRY_DELAY_SECONDS
from operators.rollback import RollbackReleases

SCHEDULE = os.environ.get("K8SMOVE_MAINTENANCE_SCHEDULE", "0 2 * * 6")
WINDOW_MINUTES = int(os.environ.get("K8SMOVE_MAINTENANCE_WINDOW_MINUTES", "120"))
MAX_PARALLEL_MOVES = 4   # concurrent rollouts; each needs room for one surge pod per workload
PROBE_BUDGET = (100.0, 20.0)   # GET/s and row writes/s for all the releases' probes together


with DAG(
    dag_id="node_maintenance",
    # No start_date: the first start waits for the next window instead of running the latest missed one.
    schedule=SCHEDULE,                    # a cron string: CronTriggerTimetable, which by default does not run
                                          # the latest missed time at once
    catchup=False,
    params=dag_params(NODE_MAINTENANCE_PARAMS),
    render_template_as_native_obj=True,   # params keep their JSON types (maps, booleans) in operator fields
    max_active_runs=1,                    # one maintenance at a time; releases are kept apart by their locks
    tags=["k8smove", "kubernetes", "maintenance"],
    doc_md=__doc__,
    default_args={"retries": MOVE_RETRIES, "retry_delay": RETRY_DELAY_SECONDS},
):
    selection = {key: f"{{{{ params.{key} }}}}" for key in
                 ("maintenance_label", "target_selector", "extra_selector", "ready_label", "allow_local_storage",
                  "release_targets", "db_strategy")}
    within_window = SkipIfWindowMissed(task_id="within_window", window_minutes=WINDOW_MINUTES, retries=0)
    plan = PlanMaintenance(task_id="plan", selection=selection, retries=0)
    stop_if_dry_run = StopIfDryRun(task_id="stop_if_dry_run", dry_run="{{ params.dry_run }}", retries=0)
    cordon = CordonNodes(task_id="cordon", nodes=plan.output["nodes"])
    start_probe = StartProbe(task_id="start_probe", targets=plan.output["probe_targets"], budget=PROBE_BUDGET,
                             max_seconds="{{ params.timeout_seconds * 2 + 120 }}").as_setup()
    release_plans = plan.output["release_plans"]
    move_releases = MoveReleases(task_id="move_releases", plans=release_plans,
                                 timeout_seconds="{{ params.timeout_seconds }}")
    rollback_releases = RollbackReleases(task_id="rollback_releases", plans=release_plans,
                                         timeout_seconds="{{ params.timeout_seconds }}", trigger_rule="one_failed")
    stop_probe = StopProbe(task_id="stop_probe", probe=start_probe.output).as_teardown(setups=start_probe)
    move = MoveWorkload.partial(
        task_id="move",
        timeout_seconds="{{ params.timeout_seconds }}",
        max_active_tis_per_dag=MAX_PARALLEL_MOVES,
        map_index_template="{{ task.move['kind'] }} {{ task.move['namespace'] }}/{{ task.move['name'] }}",
    ).expand(move=plan.output)
    evict = EvictPods(task_id="evict", selection=selection,
                      eviction_timeout_seconds="{{ params.eviction_timeout_seconds }}",
                      trigger_rule="none_failed_min_one_success")   # no workload to move skips `move`
    verify_nodes_empty = VerifyNodesEmpty(task_id="verify_nodes_empty", selection=selection, drained=evict.output)
    mark_ready = LabelNodes(task_id="mark_ready", label_nodes=plan.output["ready_labels"])
    steps = [plan, stop_if_dry_run, cordon, start_probe, move_releases, rollback_releases, stop_probe, move, evict,
             verify_nodes_empty, mark_ready]
    report = MaintenanceReport(task_id="report", steps=[t.task_id for t in steps], observed=stop_probe.output)

    chain(within_window, plan, stop_if_dry_run, cordon, start_probe, move_releases, rollback_releases, stop_probe)
    chain(cordon, move, evict, verify_nodes_empty, mark_ready)
    move_releases >> evict
    cordon >> evict
    [t for t in steps if t is not start_probe] >> report
