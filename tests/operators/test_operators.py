"""The operators themselves on kubesim (those that need no XCom; Preflight and ApplyResources run in the
`airflow dags test` end-to-end tests), with the provider's hooks reading the kubernetes_default connection
from AIRFLOW_CONN_KUBERNETES_DEFAULT. WaitReady in both modes, its trigger run as the triggerer would."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import airflow_env  # noqa: E402,F401  (Airflow environment before Airflow is imported)
from airflow.sdk.exceptions import AirflowException, TaskDeferred  # noqa: E402

from k8smove.apply import apply_manifests  # noqa: E402
from k8smove.nodes import label_nodes  # noqa: E402
from k8smove.render import render_manifests  # noqa: E402
from kubesim_release import LABEL_NODES, deploy_values  # noqa: E402
from k8smove import K8sMoveError  # noqa: E402
from k8smove.apply import record_prior_state  # noqa: E402
from kubesim_release import pods_by_component  # noqa: E402
from operators.label_nodes import LabelNodes  # noqa: E402
from operators.render import RenderTemplates  # noqa: E402
from operators.rollback import Rollback  # noqa: E402
from operators.verify import VerifyEndpoint, VerifySourceEmpty  # noqa: E402
from operators.wait_ready import WaitReady  # noqa: E402


@pytest.fixture
def connection(cluster, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": cluster.kubeconfig_path}}))
    assert os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"]


def applied(kube_client, **values):
    label_nodes(kube_client, LABEL_NODES)
    manifests = render_manifests(deploy_values(**values), ["app", "db"])
    apply_manifests(kube_client, manifests)
    return manifests


def wait_ready(manifests, **kwargs):
    return WaitReady(task_id="wait_ready", namespace="default", release="demo", manifests=manifests, **kwargs)


def test_non_deferrable_mode_waits_in_the_worker(cluster, kube_client, connection):
    operator = wait_ready(applied(kube_client), deferrable=False, timeout_seconds=60)
    assert operator.execute(context={}) is None


def test_deferrable_mode_defers_to_a_trigger_that_fires_when_ready(cluster, kube_client, connection):
    operator = wait_ready(applied(kube_client), timeout_seconds=60)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context={})
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "triggers.wait_ready.WaitReadyTrigger"
    from triggers.wait_ready import WaitReadyTrigger

    async def first_event():
        return await WaitReadyTrigger(**kwargs).run().__anext__()
    event = asyncio.run(first_event())
    assert event.payload == {"status": "success"}
    getattr(operator, deferred.value.method_name)(context={}, event=event.payload)


def test_timeout_fails_with_the_clusters_reason(cluster, kube_client, connection):
    operator = wait_ready(applied(kube_client, node_label={"demo": "nowhere"}), deferrable=False, timeout_seconds=2)
    with pytest.raises(AirflowException, match=r"Rollout not complete after 2s: Deployment demo-db.*"
                                               r"Cluster reports: pod demo-db-.*"):
        operator.execute(context={})


def test_label_nodes(cluster, kube_client, connection):
    operator = LabelNodes(task_id="label_nodes", label_nodes={"node2": {"demo": "node2"}})
    assert operator.execute(context={}) == {"node2": {"demo": "node2"}}
    assert operator.execute(context={}) == {}
    with pytest.raises(K8sMoveError, match="node 'nodeX' not found"):
        LabelNodes(task_id="label_nodes", label_nodes={"nodeX": {"demo": "x"}}).execute(context={})


def test_render_templates_returns_manifests_without_secret_values():
    manifests = RenderTemplates(task_id="render", values=deploy_values(), components=["db"]).execute(context={})
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service"]
    assert "data" not in manifests[1]


def test_verify_operators_and_rollback(cluster, kube_client, connection):
    values = deploy_values()
    manifests = applied(kube_client, external_ip=values["external_ip"])
    wait_ready(manifests, deferrable=False).execute(context={})
    url = f"http://{values['external_ip']}:8080/"
    answer = VerifyEndpoint(task_id="verify_endpoint", url=url, body_contains='"node": "node1"',
                            deadline_seconds=20).execute(context={})
    assert answer["status"] == 200 and answer["body"]["node"] == "node1"

    moved = render_manifests({**values, "node_label": {"demo": "node2"}}, ["app", "db"])
    prior = record_prior_state(kube_client, moved)
    apply_manifests(kube_client, moved)
    wait_ready(moved, deferrable=False).execute(context={})
    VerifySourceEmpty(task_id="verify_source_empty", namespace="default", release="demo",
                      sources={"app": {"demo": "node1"}, "db": {"demo": "node1"}},
                      node_label={"demo": "node2"}).execute(context={})

    Rollback(task_id="rollback", namespace="default", release="demo", prior_state=prior, deferrable=False,
             timeout_seconds=60).execute(context={})
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    with pytest.raises(K8sMoveError, match="pods still on the source node"):
        VerifySourceEmpty(task_id="verify_source_empty", namespace="default", release="demo",
                          sources={"app": {"demo": "node1"}}, node_label={"demo": "node2"}).execute(context={})
