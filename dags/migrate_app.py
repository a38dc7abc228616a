"""
### migrate_app

Move a release deployed by **deploy_app** to the nodes selected by `node_label`, without disruption, through
k8smove's move engine (the one `deploy_app` and `node_maintenance` use too):

1. **preflight** — reads the release's recorded values and current placement, renders the manifests with the
   target and checks them against the cluster: Ready, schedulable nodes with room, disjoint from the current
   ones, volumes the target can mount. Nothing is written. Moving to where the release already is changes
   nothing and succeeds.
2. **move** — takes the release's lock (Lease `<release>-k8smove-lock`: a second run moving the same release
   is refused with this run's name), records the prior state on it, server-side applies the manifests (the App
   rolls out surge-first; the DB gets a streaming standby on the target, or with `db_strategy` "recreate" is
   stopped and started there with its volume), waits in the triggerer until every pod is Ready on the target,
   switches the DB over (fence the old primary, promote the standby, point the DB Service at it: writes wait
   only for this), checks nothing is left on the source and the Service answers, then records the new values
   and releases the lock. The old DB volume is removed by **report** once the rows are proven.
3. **rollback** — if the move failed: restores the recorded prior state and waits until it is Ready where it was.

While it runs, **start_probe** (setup) and **stop_probe** (teardown) measure it from outside: 20 GET/s to the
service and 5 row writes/s through the app; afterwards every acknowledged row must read back, and the report
says how long writes went unacknowledged (`probe.writes.max_stall_ms`). **report**, the
only leaf, writes the migration report (XCom, task log and a JSON file under `K8SMOVE_REPORT_DIR`, any fsspec URL) and
fails the run with the first failure's reason unless the release moved (or already was where asked).

With `dry_run`, **move** only asks the API server what it would change (dryRun=All, nothing persisted, no lock),
no probe is started, and the report's outcome is `dry_run` with the planned changes.

Example conf: `{"node_label": {"demo": "node2"}}` (add `"dry_run": true` to only see what would change).
In the trigger form, paste JSON objects with double quotes, as here, into their editors, or paste the whole conf
under Advanced Options → Configuration JSON: typed in, JSON comes out mangled (the editor inserts a closing
quote or brace for each opening one you type).
"""
from airflow.sdk import DAG

from k8smove.params import MIGRATE_PARAMS
from operators.move import PlanRelease
from operators.observe import record_step
from operators.params import dag_params
from operators.release_move import release_move_tasks

with DAG(
    dag_id="migrate_app",
    schedule=None,
    params=dag_params(MIGRATE_PARAMS),
    render_template_as_native_obj=True,   # params keep their JSON types (maps, lists) in operator fields
    max_active_runs=16,                   # each release's lock, not the DAG, keeps two moves of one release apart
    tags=["k8smove", "kubernetes", "migrate"],
    doc_md=__doc__,
    default_args={"on_success_callback": record_step, "on_failure_callback": record_step},
):
    preflight = PlanRelease(
        task_id="preflight",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        node_label="{{ params.node_label }}",
        components="{{ params.components }}",
        db_strategy="{{ params.db_strategy }}",
    )
    release_move_tasks(preflight)
