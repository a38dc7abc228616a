"""
### migrate_app

Move a release deployed by **deploy_app** to the nodes selected by `node_label`, without disruption:
manifests are re-rendered with the target label and server-side applied; the App rolls out surge-first
(a new pod is Ready on the target before the old one stops), the DB is recreated on the target with its
network-attached volume.

1. **preflight** — the release exists; its current placement (the workloads' nodeSelector) and deploy
   values are read from the cluster; the target selects Ready, schedulable nodes with room, disjoint
   from the current ones. Moving to where the release already is changes nothing and succeeds.
2. **render** → 3. **apply** (records the prior state) → 4. **wait_ready** on the target →
5. **verify_source_empty** → 6. **verify_endpoint**.

If a task from **apply** on fails, **rollback** restores the recorded state and waits until it is Ready
on the source again; **fail_run_if_any_failed** then ends the run failed (the original reason is in the
failed task's log).

Example conf: `{"node_label": {"demo": "node2"}}`.
"""
from airflow.sdk import DAG, chain

from k8smove.params import MIGRATE_PARAMS
from operators.apply import ApplyResources
from operators.outcome import FailRunIfAnyFailed
from operators.params import dag_params
from operators.preflight import Preflight
from operators.render import RenderTemplates
from operators.rollback import Rollback
from operators.verify import VerifyEndpoint, VerifySourceEmpty
from operators.wait_ready import WaitReady

with DAG(
    dag_id="migrate_app",
    schedule=None,
    params=dag_params(MIGRATE_PARAMS),
    render_template_as_native_obj=True,   # params keep their JSON types (maps, lists) in operator fields
    max_active_runs=1,                    # one change to a cluster's placement at a time
    tags=["k8smove", "kubernetes", "migrate"],
    doc_md=__doc__,
):
    preflight = Preflight(
        task_id="preflight",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        node_label="{{ params.node_label }}",
        components="{{ params.components }}",
    )
    render = RenderTemplates(task_id="render", values=preflight.output["values"],
                             components="{{ params.components }}")
    apply = ApplyResources(task_id="apply", manifests=render.output)
    wait_ready = WaitReady(
        task_id="wait_ready",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        manifests=render.output,
        timeout_seconds="{{ params.timeout_seconds }}",
    )
    verify_source_empty = VerifySourceEmpty(
        task_id="verify_source_empty",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        sources=preflight.output["sources"],
        node_label="{{ params.node_label }}",
    )
    verify_endpoint = VerifyEndpoint(task_id="verify_endpoint", url=preflight.output["service_url"], retries=1)
    rollback = Rollback(
        task_id="rollback",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        prior_state="{{ ti.xcom_pull(task_ids='apply', key='prior_state') }}",
        timeout_seconds="{{ params.timeout_seconds }}",
        trigger_rule="one_failed",
    )

    # Between apply and the verifications is where checks that run during the move belong
    # (availability probe, DB writer): they go alongside wait_ready, upstream of rollback.
    chain(preflight, render, apply, wait_ready, verify_source_empty, verify_endpoint)
    [apply, wait_ready, verify_source_empty, verify_endpoint] >> rollback
    # rollback is the only leaf: without this the run would end "success" after a failure.
    [preflight, render, apply, wait_ready, verify_source_empty, verify_endpoint, rollback] >> FailRunIfAnyFailed(
        task_id="fail_run_if_any_failed")
