"""
### end_maintenance

Bring back the nodes **node_maintenance** emptied (label `maintenance_label`, default `maintenance=ready`):

1. **select_nodes** — the nodes carrying the label; refuses, before any write, when it may not lift an exclusion
   of theirs in some namespace (in the cluster: apply `include/rbac/namespace/` there);
2. **uncordon** them;
3. **lift_exclusions** — remove them from the nodeAffinity exclusions node_maintenance applied (those
   Deployments roll out surge-first; pods do not move back by themselves, the scheduler may use the nodes again);
4. **unlabel** — remove the `maintenance_label` keys.

Example conf: `{"maintenance_label": {"maintenance": "ready"}}`.
In the trigger form, paste JSON objects with double quotes, as here, into their editors, or paste the whole conf
under Advanced Options → Configuration JSON: typed in, JSON comes out mangled (the editor inserts a closing
quote or brace for each opening one you type).
"""
from airflow.sdk import DAG, chain

from k8smove.params import END_MAINTENANCE_PARAMS
from operators.label_nodes import LabelNodes
from operators.maintenance import LiftExclusions, SelectMaintenanceNodes, UncordonNodes
from operators.params import dag_params

with DAG(
    dag_id="end_maintenance",
    schedule=None,
    params=dag_params(END_MAINTENANCE_PARAMS),
    render_template_as_native_obj=True,   # params keep their JSON types (maps) in operator fields
    max_active_runs=1,                    # one change to a cluster's placement at a time
    tags=["k8smove", "kubernetes", "maintenance"],
    doc_md=__doc__,
):
    select_nodes = SelectMaintenanceNodes(task_id="select_nodes", maintenance_label="{{ params.maintenance_label }}")
    uncordon = UncordonNodes(task_id="uncordon", nodes=select_nodes.output["nodes"])
    lift_exclusions = LiftExclusions(task_id="lift_exclusions", nodes=select_nodes.output["nodes"])
    unlabel = LabelNodes(task_id="unlabel", label_nodes=select_nodes.output["unlabel"])

    chain(select_nodes, uncordon, lift_exclusions, unlabel)
