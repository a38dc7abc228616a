"""
### deploy_app

Deploy the demo **App** (HTTP service) and its **DB** (PostgreSQL on a network-attached volume) on the
nodes selected by `node_label`, exposed by a Service at `http://<external_ip>:<port>/`.

1. **preflight** — conf and cluster checks, before any write: nodes exist, `node_label` selects at least
   one Ready, schedulable node whose taints are tolerated and which has room for the pods. On an existing
   release, what cannot change under connected clients (`external_ip`, `port`, `storage`) is refused.
   `node_label` is required for a new release; left empty on one that exists, the release stays where it runs.
2. **label_nodes** — set (or remove, with `key-`) the node labels in `label_nodes`.
3. **move** — k8smove's move engine, as `migrate_app` runs it: the release's lock, server-side apply as field
   manager `k8smove` (an identical re-run changes nothing), the wait until every pod is Running and Ready on a
   target node (deferred to the triggerer), the Service answering, then the recorded values; **rollback** undoes
   it if it fails. Re-deploying an existing release with another `node_label` is therefore a move with the same
   proof: **start_probe**/**stop_probe** measure it and **report** says `moved` with the probe's figures (a first
   deploy: `deployed`).

With `dry_run`, **label_nodes** and **move** only ask the API server what they would change (dryRun=All,
nothing persisted; the diffs are in their logs).

Example conf: `{"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
"node_label": {"demo": "node1"}, "external_ip": "10.192.0.1", "port": 8080}`.
In the trigger form, paste JSON objects with double quotes, as here, into their editors, or paste the whole conf
under Advanced Options → Configuration JSON: typed in, JSON comes out mangled (the editor inserts a closing
quote or brace for each opening one you type).
Then move it with **migrate_app**.
"""
from airflow.sdk import DAG

from k8smove.params import DEPLOY_PARAMS
from operators.label_nodes import LabelNodes
from operators.move import PlanRelease
from operators.observe import record_step
from operators.params import dag_params
from operators.release_move import release_move_tasks

with DAG(
    dag_id="deploy_app",
    schedule=None,
    params=dag_params(DEPLOY_PARAMS),
    render_template_as_native_obj=True,   # params keep their JSON types (maps, integers) in operator fields
    max_active_runs=16,                   # each release's lock, not the DAG, keeps two moves of one release apart
    tags=["k8smove", "kubernetes", "deploy"],
    doc_md=__doc__,
    default_args={"on_success_callback": record_step, "on_failure_callback": record_step},
):
    preflight = PlanRelease(
        task_id="preflight",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        node_label="{{ params.node_label }}",
        label_nodes="{{ params.label_nodes }}",
        settings={
            "external_ip": "{{ params.external_ip }}",
            "port": "{{ params.port }}",
            "images": "{{ params.images }}",
            "replicas": "{{ params.replicas }}",
            "storage": "{{ params.storage }}",
        },
    )
    label_nodes = LabelNodes(task_id="label_nodes", label_nodes="{{ params.label_nodes }}",
                             dry_run="{{ params.dry_run }}", retries=2)
    release_move_tasks(preflight, before=[label_nodes])
