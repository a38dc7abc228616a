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
on the source again.

With `dry_run`, **apply** only asks the API server what it would change (dryRun=All, nothing persisted),
**stop_if_dry_run** ends the run there, no probe is started, and the report's outcome is `dry_run` with the
planned changes.

While the move runs, **start_probe** (setup) and **stop_probe** (teardown) measure it from outside: 20 GET/s
to the service and 5 row writes/s through the app; afterwards every acknowledged row must read back.
**report**, the only leaf, writes the migration report (XCom, task log and, when `K8SMOVE_REPORT_DIR` is
set, a JSON file there) and fails the run with the first failure's reason unless the release moved (or
already was where asked).

Example conf: `{"node_label": {"demo": "node2"}}` (add `"dry_run": true` to only see what would change).
"""
from airflow.sdk import DAG, chain

from k8smove.params import MIGRATE_PARAMS
from operators.apply import ApplyResources
from operators.gates import StopIfDryRun
from operators.observe import MigrationReport, StartProbe, StopProbe, record_step
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
    default_args={"on_success_callback": record_step, "on_failure_callback": record_step},
):
    preflight = Preflight(
        task_id="preflight",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        node_label="{{ params.node_label }}",
        components="{{ params.components }}",
    )
    start_probe = StartProbe(
        task_id="start_probe",
        url=preflight.output["service_url"],
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        max_seconds="{{ params.timeout_seconds * 2 + 120 }}",   # outlives the move and a rollback, never the run
        dry_run="{{ params.dry_run }}",
    ).as_setup()
    render = RenderTemplates(task_id="render", values=preflight.output["values"],
                             components="{{ params.components }}")
    apply = ApplyResources(task_id="apply", manifests=render.output, dry_run="{{ params.dry_run }}")
    # only wait_ready is skipped directly; the rest follow their trigger rules, so rollback skips, report runs
    stop_if_dry_run = StopIfDryRun(task_id="stop_if_dry_run", dry_run="{{ params.dry_run }}",
                                   ignore_downstream_trigger_rules=False)
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
    stop_probe = StopProbe(task_id="stop_probe", probe=start_probe.output).as_teardown(setups=start_probe)
    steps = [preflight, start_probe, render, apply, stop_if_dry_run, wait_ready, verify_source_empty, verify_endpoint,
             rollback, stop_probe]
    report = MigrationReport(
        task_id="report",
        namespace="{{ params.namespace }}",
        release="{{ params.release }}",
        steps=[t.task_id for t in steps],
        observed=stop_probe.output,
        planned="{{ ti.xcom_pull(task_ids='apply') if params.dry_run else None }}",
    )

    chain(preflight, start_probe, render, apply, stop_if_dry_run, wait_ready, verify_source_empty, verify_endpoint,
          stop_probe)
    [apply, wait_ready, verify_source_empty, verify_endpoint] >> rollback >> stop_probe
    # Not start_probe itself: a setup task's direct downstream tasks must be all_success ones. Not the gate:
    # it skips its direct downstream tasks; the report follows it through wait_ready.
    [t for t in steps if t not in (start_probe, stop_if_dry_run)] >> report
