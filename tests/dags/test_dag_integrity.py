"""DagBag integrity: the DAGs import cleanly and fast, and their params are the contract."""
from __future__ import annotations

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.exceptions import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization

from scripts.local_airflow import ROOT


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_dag_ids(dagbag):
    assert {"deploy_app", "migrate_app"} <= set(dagbag.dag_ids)


def test_every_dag_file_parses_in_under_100ms(dagbag):
    slow = {s.file: s.duration.total_seconds() for s in dagbag.dagbag_stats if s.duration.total_seconds() >= 0.1}
    assert slow == {}


@pytest.mark.parametrize("dag_id", ["deploy_app", "migrate_app"])
def test_dag_declares_docs_tags_and_lets_release_locks_serialize_moves(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and dag_id in dag.doc_md and "lock" in dag.doc_md
    assert "k8smove" in dag.tags
    assert dag.max_active_runs > 1      # moves of different releases run in parallel; one release's are locked
    assert dag.schedule is None


@pytest.mark.parametrize("dag_id,before", [("migrate_app", []), ("deploy_app", ["label_nodes"])])
def test_both_dags_move_through_the_same_engine(dagbag, dag_id, before):
    dag = dagbag.dags[dag_id]
    order = ["preflight", *before, "start_probe", "move", "rollback", "stop_probe"]
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert type(dag.get_task("move")).__name__ == "MoveReleases"
    assert type(dag.get_task("preflight")).__name__ == "PlanRelease"
    move, rollback = dag.get_task("move"), dag.get_task("rollback")
    assert move.retries >= 1 and rollback.retries >= 1       # every step is safe to run again
    # preflight: the plans it undoes; a refused plan (nothing locked) makes it skip
    assert rollback.trigger_rule == "one_failed" and rollback.upstream_task_ids == {"preflight", "move"}
    start_probe, stop_probe = dag.get_task("start_probe"), dag.get_task("stop_probe")
    assert start_probe.is_setup and stop_probe.is_teardown
    assert stop_probe.upstream_task_ids == {"start_probe", "move", "rollback"}
    report = dag.get_task("report")
    assert report.trigger_rule == "all_done"
    assert report.upstream_task_ids == set(dag.task_ids) - {"report", "start_probe"}
    assert [t.task_id for t in dag.leaves] == ["report"]


def test_params_have_schemas_and_valid_defaults(dagbag):
    for dag_id in ("deploy_app", "migrate_app"):
        params = dagbag.dags[dag_id].params
        for name in params:
            assert params.get_param(name).schema.get("type"), f"{dag_id}.{name} has no JSON schema type"
        params.validate()


def validate(dag, conf):
    """What a trigger (UI form, CLI, REST API) does before creating the run: merge conf into the serialized
    DAG's params and validate them."""
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    serialized.params.deep_merge(conf).validate()


@pytest.mark.parametrize("dag_id,conf,field", [
    ("deploy_app", {"node_label": {"demo": "node1\n  hostNetwork: true"}}, "node_label"),
    ("deploy_app", {"node_label": {"bad key!": "x"}}, "node_label"),
    ("deploy_app", {"node_label": {}}, "node_label"),
    ("deploy_app", {"label_nodes": {"node1": {"demo": "{{ 7 * 7 }}"}}}, "label_nodes"),
    ("deploy_app", {"label_nodes": {"Node_1": {"demo": "x"}}}, "label_nodes"),
    ("deploy_app", {"external_ip": "300.1.1.1"}, "external_ip"),
    ("deploy_app", {"external_ip": "example.com"}, "external_ip"),
    ("deploy_app", {"port": 0}, "port"),
    ("deploy_app", {"port": 70000}, "port"),
    ("deploy_app", {"port": "8080"}, "port"),
    ("deploy_app", {"images": {"app": "x", "db": "y", "extra": "z"}}, "images"),
    ("deploy_app", {"storage": {"class": "standard", "size": "lots"}}, "storage"),
    ("deploy_app", {"replicas": 0}, "replicas"),
    ("deploy_app", {"release": "Demo_1"}, "release"),
    ("deploy_app", {"namespace": "-x"}, "namespace"),
    # valid but for a trailing newline (a pattern's "$" alone would match before it)
    ("deploy_app", {"node_label": {"demo": "node1\n"}}, "node_label"),
    ("deploy_app", {"node_label": {"demo\n": "node1"}}, "node_label"),
    ("deploy_app", {"label_nodes": {"node1\n": {"demo": "node1"}}}, "label_nodes"),
    ("deploy_app", {"label_nodes": {"node1": {"demo-\n": None}}}, "label_nodes"),
    ("deploy_app", {"release": "demo\n"}, "release"),
    ("deploy_app", {"namespace": "default\n"}, "namespace"),
    ("deploy_app", {"images": {"app": "kubesim-demo-app:1.0\n", "db": "postgres:16"}}, "images"),
    ("deploy_app", {"storage": {"class": "standard\n", "size": "1Gi"}}, "storage"),
    ("deploy_app", {"storage": {"class": "standard", "size": "1Gi\n"}}, "storage"),
    ("node_maintenance", {"release_targets": {"default/demo\n": {"demo": "node2"}}}, "release_targets"),
    ("migrate_app", {"node_label": {"demo": "a b"}}, "node_label"),
    ("migrate_app", {"timeout_seconds": 1}, "timeout_seconds"),
    ("migrate_app", {"components": ["app", "cache"]}, "components"),
    ("migrate_app", {"components": []}, "components"),
])
def test_invalid_conf_is_refused_at_trigger_time_naming_the_field(dagbag, dag_id, conf, field):
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {field}"):
        validate(dagbag.dags[dag_id], conf)


def test_valid_conf_is_accepted(dagbag):
    validate(dagbag.dags["deploy_app"], {
        "label_nodes": {"node1": {"demo": "node1", "old-": None}}, "node_label": {"demo": "node1"},
        "external_ip": "10.0.0.5", "port": 8080, "storage": {"class": "standard", "size": "2Gi"}})
    validate(dagbag.dags["migrate_app"], {"node_label": {"demo": "node2"}, "components": ["db"]})


@pytest.mark.parametrize("dag_id", ["deploy_app", "migrate_app", "node_maintenance", "end_maintenance"])
def test_every_param_guides_the_trigger_form(dagbag, dag_id):
    """Issue 13: the form shows titles, Airflow's errors name conf keys, so each title names its key; each param
    says what it takes: the range of a number, the values of an enumeration, how to type a JSON object."""
    for key in dagbag.dags[dag_id].params:
        param = dagbag.dags[dag_id].params.get_param(key)
        schema, description = param.schema, param.description
        assert schema["title"].endswith(f"({key})"), (key, schema["title"])
        assert description, key
        if "minimum" in schema:
            assert f"Allowed: {schema['minimum']} to {schema['maximum']}" in description, key
        if "enum" in schema:
            assert "One of: " + ", ".join(schema["enum"]) in description, key
        if (schema.get("items") or {}).get("enum"):   # rendered as a multi-select, not a bare textarea
            assert schema["examples"] == schema["items"]["enum"], key
        if "object" in (schema["type"] if isinstance(schema["type"], list) else [schema["type"]]):
            assert "Enter a JSON object" in description and "Paste it" in description, key


@pytest.mark.parametrize("dag_id", ["deploy_app", "migrate_app", "node_maintenance", "end_maintenance"])
def test_dag_docs_say_how_to_enter_json_in_the_form(dagbag, dag_id):
    """Typed into the form's JSON editors, JSON is mangled (auto-closed quotes); pasted, it is not (test_ui.py)."""
    assert "paste JSON objects with double quotes" in dagbag.dags[dag_id].doc_md
    assert "Advanced Options → Configuration JSON" in dagbag.dags[dag_id].doc_md
