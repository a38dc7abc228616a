"""The operators themselves on kubesim, with the provider's hooks reading the kubernetes_default connection from
AIRFLOW_CONN_KUBERNETES_DEFAULT: the move engine's operators in both wait modes, their trigger run as the
triggerer would. The task context is a stand-in (the run's id and an XCom recorder); the DAG tests run them for
real under `airflow dags test` and the scheduler."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import airflow_env  # noqa: E402,F401  (Airflow environment before Airflow is imported)
from airflow.sdk.exceptions import AirflowException, AirflowSkipException, TaskDeferred  # noqa: E402

from k8smove import K8sMoveError, lock  # noqa: E402
from k8smove.engine import plan_release  # noqa: E402
from k8smove.nodes import label_nodes  # noqa: E402
from kubesim_release import LABEL_NODES, deploy_values, pods_by_component  # noqa: E402
from operators.label_nodes import LabelNodes  # noqa: E402
from operators.move import MoveReleases  # noqa: E402
from operators.rollback import RollbackReleases  # noqa: E402


class TaskInstance:
    def __init__(self):
        self.xcom = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def context(run_id="manual__1"):
    return {"dag": SimpleNamespace(dag_id="migrate_app"), "run_id": run_id, "ti": TaskInstance()}


@pytest.fixture
def connection(cluster, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": cluster.kubeconfig_path}}))
    assert os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"]


def deploy_plan(kube_client, **values):
    label_nodes(kube_client, LABEL_NODES)
    values = deploy_values(**values)
    settings = {k: v for k, v in values.items() if k not in ("namespace", "release", "node_label")}
    return plan_release(kube_client, "default", "demo", values["node_label"], settings=settings)


def move(plans, **kwargs):
    return MoveReleases(task_id="move", plans=plans, **kwargs)


def test_non_deferrable_mode_waits_in_the_worker(cluster, kube_client, connection):
    ctx = context()
    outcomes = move([deploy_plan(kube_client)], deferrable=False, timeout_seconds=60).execute(ctx)
    assert outcomes["default/demo"]["outcome"] == "moved" and ctx["ti"].xcom["releases"] == outcomes
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    assert lock.current(kube_client, "default", "demo") is None       # committed: the lock is released


def test_a_rollout_done_within_the_workers_wait_is_not_deferred(cluster, kube_client, connection, monkeypatch):
    monkeypatch.setenv("AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS", "30")
    outcomes = move([deploy_plan(kube_client)], timeout_seconds=60).execute(ctx := context())   # no TaskDeferred
    assert outcomes["default/demo"]["outcome"] == "moved" and ctx["ti"].xcom["releases"] == outcomes
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}


def test_a_rollout_slower_than_the_workers_wait_defers_with_the_whole_deadline(cluster, kube_client, connection,
                                                                               monkeypatch):
    monkeypatch.setenv("AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS", "1")
    cluster.faults.add("slow-startup", node="node1", seconds=5)       # the pods need longer than the worker waits
    started = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        move([deploy_plan(kube_client)], timeout_seconds=60).execute(context())
    assert 1 <= time.time() - started < 10
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "triggers.wait_ready.WaitReadyTrigger" and kwargs["deadline"] >= started + 60


def test_deferrable_mode_defers_to_a_trigger_that_fires_when_ready(cluster, kube_client, connection, monkeypatch):
    monkeypatch.setenv("AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS", "0")
    operator = move([deploy_plan(kube_client)], timeout_seconds=60)
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(ctx)
    assert lock.current(kube_client, "default", "demo")["spec"]["holderIdentity"] == "migrate_app/manual__1"
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "triggers.wait_ready.WaitReadyTrigger"
    from triggers.wait_ready import WaitReadyTrigger

    async def first_event():
        return await WaitReadyTrigger(**kwargs).run().__anext__()
    event = asyncio.run(first_event())
    assert event.payload["status"] == "success"
    assert [(g["namespace"], g["release"], g["status"]) for g in event.payload["groups"]] == [
        ("default", "demo", "success")]
    outcomes = getattr(operator, deferred.value.method_name)(ctx, event=event.payload, **deferred.value.kwargs)
    assert outcomes["default/demo"]["outcome"] == "moved"


def test_timeout_fails_with_the_clusters_reason_and_the_rollback_undoes_it(cluster, kube_client, connection):
    first = move([deploy_plan(kube_client)], deferrable=False, timeout_seconds=60)
    first.execute(context("manual__0"))
    target = plan_release(kube_client, "default", "demo", {"demo": "node2"})
    cluster.faults.add("slow-startup", node="node2", seconds=120)
    ctx = context()
    with pytest.raises(AirflowException, match=r"default/demo failed: Rollout not complete after 3s: Deployment "
                                               r"demo-(app|db).*Cluster reports: "):
        move([target], deferrable=False, timeout_seconds=3).execute(ctx)
    assert ctx["ti"].xcom["releases"]["default/demo"]["outcome"] == "failed"
    assert lock.record_of(lock.current(kube_client, "default", "demo"))["phase"] == "applied"
    undone = RollbackReleases(task_id="rollback", plans=[target], deferrable=False, timeout_seconds=60).execute(ctx)
    assert undone["default/demo"]["outcome"] == "rolled_back"
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    assert lock.current(kube_client, "default", "demo") is None
    with pytest.raises(AirflowSkipException, match="holds no release's lock"):   # a second run changes nothing
        RollbackReleases(task_id="rollback", plans=[target], deferrable=False).execute(ctx)


def test_label_nodes(cluster, kube_client, connection):
    operator = LabelNodes(task_id="label_nodes", label_nodes={"node2": {"demo": "node2"}})
    assert operator.execute(context={}) == {"node2": {"demo": "node2"}}
    assert operator.execute(context={}) == {}
    with pytest.raises(K8sMoveError, match="node 'nodeX' not found"):
        LabelNodes(task_id="label_nodes", label_nodes={"nodeX": {"demo": "x"}}).execute(context={})


def generations(kube_client):
    from kubernetes.client import AppsV1Api

    return {d.metadata.name: d.metadata.generation for d in AppsV1Api(kube_client).list_namespaced_deployment(
        "default").items}


def test_every_step_is_safe_to_run_again_after_a_partial_or_a_whole_first_run(cluster, kube_client, connection):
    """What a retry does after Airflow failed a resumed task (apache/airflow#71580) or a worker died."""
    from k8smove.engine import begin

    move([deploy_plan(kube_client)], deferrable=False, timeout_seconds=60).execute(context("manual__0"))
    target = plan_release(kube_client, "default", "demo", {"demo": "node2"})
    begin(kube_client, target, "migrate_app/manual__1", 60)            # the first try died after its apply
    ctx = context()
    again = move([target], deferrable=False, timeout_seconds=60).execute(ctx)   # the retry finishes it
    assert again["default/demo"]["outcome"] == "moved"
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    before = generations(kube_client)
    writes = len(cluster.writes(dry_runs=False))
    # and after a whole run (Airflow retried a try after an earlier one had finished: apache/airflow#71580): the
    # move's outcome comes back from the release record, nothing is written, no lock is taken
    once_more = move([target], deferrable=False, timeout_seconds=60).execute(ctx)
    assert once_more == again and once_more["default/demo"]["answered"]["node"] == "node2"
    assert len(cluster.writes(dry_runs=False)) == writes
    assert generations(kube_client) == before and lock.current(kube_client, "default", "demo") is None
    with pytest.raises(AirflowSkipException):                              # nothing of this run's to undo
        RollbackReleases(task_id="rollback", plans=[target], deferrable=False).execute(ctx)
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
