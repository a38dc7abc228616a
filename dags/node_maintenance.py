"""
### node_maintenance

Empty the nodes marked for maintenance (label `maintenance_label`, default `maintenance=scheduled`) without
disruption, then label them `ready_label` (default `maintenance=ready`). Runs on a schedule (Saturday 02:00 UTC;
env `K8SMOVE_MAINTENANCE_SCHEDULE` overrides the cron when the DAG is parsed) and by hand with conf.

1. **plan** — reads the cluster, logs which workload goes where and what is evicted; writes nothing.
   With `dry_run` the run stops here (**stop_if_dry_run**).
2. **cordon** the nodes.
3. **move** — one mapped task per workload with pods there (k8smove's, `app.kubernetes.io/managed-by=k8smove`,
   and those `extra_selector` picks), in parallel: Deployments surge-first (a server-side applied nodeAffinity
   `kubernetes.io/hostname NotIn [nodes]`, the app's own placement kept), StatefulSets and Recreate
   Deployments by eviction (recreated elsewhere on their network-attached volume). A workload on a node-local
   volume, or with nowhere to go, is refused and reported, never moved.
4. **evict** every other pod through the Eviction API (PodDisruptionBudgets respected, nothing forced);
   DaemonSet and mirror pods stay, pods with emptyDir or no controller are reported (`allow_local_storage`
   evicts emptyDir ones).
5. **verify_nodes_empty** — fails the run listing each pod left and why; else 6. **mark_ready**.

Bring the nodes back with **end_maintenance**. Example conf: `{"target_selector": {"pool": "blue"}, "dry_run": true}`.
"""
import os
from datetime import datetime, timezone

from airflow.sdk import DAG, chain

from k8smove.params import NODE_MAINTENANCE_PARAMS
from operators.gates import StopIfDryRun
from operators.label_nodes import LabelNodes
from operators.maintenance import CordonNodes, EvictPods, MoveWorkload, PlanMaintenance, VerifyNodesEmpty
from operators.params import dag_params

SCHEDULE = os.environ.get("K8SMOVE_MAINTENANCE_SCHEDULE", "0 2 * * 6")
MAX_PARALLEL_MOVES = 4   # concurrent rollouts; each needs room for one surge pod per workload


with DAG(
    dag_id="node_maintenance",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params=dag_params(NODE_MAINTENANCE_PARAMS),
    render_template_as_native_obj=True,   # params keep their JSON types (maps, booleans) in operator fields
    max_active_runs=1,                    # one change to a cluster's placement at a time
    tags=["k8smove", "kubernetes", "maintenance"],
    doc_md=__doc__,
):
    selection = {key: f"{{{{ params.{key} }}}}" for key in
                 ("maintenance_label", "target_selector", "extra_selector", "ready_label", "allow_local_storage")}
    plan = PlanMaintenance(task_id="plan", selection=selection)
    stop_if_dry_run = StopIfDryRun(task_id="stop_if_dry_run", dry_run="{{ params.dry_run }}")
    cordon = CordonNodes(task_id="cordon", nodes=plan.output["nodes"])
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

    chain(plan, stop_if_dry_run, cordon, move, evict, verify_nodes_empty, mark_ready)
    cordon >> evict
