"""
### deploy_app

Deploy the demo **App** (HTTP service) and its **DB** (PostgreSQL on a network-attached volume) on the
nodes selected by `node_label`, exposed by a Service at `http://<external_ip>:<port>/`.

1. **preflight** — conf and cluster checks, before any write: nodes exist, `node_label` selects at least
   one Ready, schedulable node whose taints are tolerated and which has room for the pods.
2. **label_nodes** — set (or remove, with `key-`) the node labels in `label_nodes`.
3. **render** — `include/templates/*.yaml.j2` in the Jinja2 sandbox, validated against the Kubernetes schemas.
4. **apply** — server-side apply as field manager `k8smove`; an identical re-run changes nothing.
5. **wait_ready** — until every pod is Running and Ready on a target node (deferrable, watch-driven).
6. **verify_endpoint** — the Service answers.

With `dry_run`, **label_nodes** and **apply** only ask the API server what they would change (dryRun=All,
nothing persisted; the diffs are in their logs) and **stop_if_dry_run** ends the run there.

Example conf: `{"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
"node_label": {"demo": "node1"}, "external_ip": "127.0.0.1", "port": 8080}`.
Then move it with **migrate_app**.
"""
from airflow.sdk import DAG, chain

from k8smove.params import DEPLOY_PARAMS
from operators.apply import ApplyResources
from operators.gates import StopIfDryRun
from operators.label_nodes import LabelNodes
from operators.params import dag_params
from operators.preflight import Preflight
from operators.render import RenderTemplates
from operators.verify import VerifyEndpoint
from operators.wait_ready import WaitReady

with DAG(
    dag_id="deploy_app",
    schedule=None,
    params=dag_params(DEPLOY_PARAMS),
    render_template_as_native_obj=True,   # params keep their JSON types (maps, integers) in operator fields
    max_active_runs=1,                    # one change to a cluster's placement at a time
    tags=["k8smove", "kubernetes", "deploy"],
    doc_md=__doc__,
):
    preflight = Preflight(
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
    render = RenderTemplates(task_id="render", values=preflight.output["values"])
    apply = ApplyResources(task_id="apply", manifests=render.output, dry_run="{{ params.dry_run }}")
    stop_if_dry_run = StopIfDryRun(task_id="stop_if_dry_run", dry_run="{{ params.dry_run }}")
    wait_ready = WaitReady(
        task_id="wait_ready",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        manifests=render.output,
        timeout_seconds="{{ params.timeout_seconds }}",
    )
    verify_endpoint = VerifyEndpoint(task_id="verify_endpoint", url=preflight.output["service_url"], retries=1)

    chain(preflight, label_nodes, render, apply, stop_if_dry_run, wait_ready, verify_endpoint)
