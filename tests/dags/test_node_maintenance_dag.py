"""node_maintenance / end_maintenance as declared: schedule and its override, one run at a time, mapped moves,
params refused at trigger time."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from unittest.mock import patch

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.exceptions import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization

from scripts.local_airflow import ROOT

DAG_FILE = str(ROOT / "dags" / "node_maintenance.py")


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_scheduled_weekly_without_catchup_one_run_at_a_time(dagbag):
    dag = dagbag.dags["node_maintenance"]
    assert dag.schedule == "0 2 * * 6" and dag.start_date is None
    assert dag.catchup is False and dag.max_active_runs == 1
    assert "k8smove" in dag.tags and "node_maintenance" in dag.doc_md
    assert dagbag.dags["end_maintenance"].schedule is None


def test_the_schedule_is_read_from_the_environment_at_parse_time(monkeypatch):
    monkeypatch.setenv("K8SMOVE_MAINTENANCE_SCHEDULE", "*/2 * * * *")
    dag = DagBag(dag_folder=DAG_FILE).dags["node_maintenance"]
    assert dag.schedule == "*/2 * * * *"


def test_tasks_and_mapped_moves(dagbag):
    dag = dagbag.dags["node_maintenance"]
    for order in (["within_window", "plan", "stop_if_dry_run", "cordon", "move", "evict", "verify_nodes_empty",
                   "mark_ready"],
                  ["cordon", "start_probe", "move_releases", "rollback_releases", "stop_probe"]):
        for upstream, downstream in zip(order, order[1:]):
            assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert "evict" in dag.get_task("move_releases").downstream_task_ids
    move = dag.get_task("move")
    assert move.is_mapped and move.partial_kwargs["max_active_tis_per_dag"] >= 2
    assert dag.get_task("evict").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("rollback_releases").trigger_rule == "one_failed"
    assert dag.get_task("move_releases").retries >= 1      # a lost worker or Airflow's deferral race: run again
    assert [t.task_id for t in dag.leaves] == ["report"]
    end = dagbag.dags["end_maintenance"]
    order = ["select_nodes", "uncordon", "lift_exclusions", "unlabel"]
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in end.get_task(upstream).downstream_task_ids


def test_a_first_start_between_windows_waits_for_the_next_one(dagbag):
    """Started on a Wednesday, the scheduler's first run is next Saturday 02:00, not the Saturday that passed."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    dag = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["node_maintenance"]))
    wednesday = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)
    with patch("airflow.timetables.trigger.utcnow", return_value=wednesday):
        info = dag.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=TimeRestriction(
            earliest=dag.start_date, latest=None, catchup=False))
    assert info.run_after == datetime(2026, 12, 5, 2, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("run_type,late_minutes,runs", [
    ("scheduled", 5, True), ("scheduled", 119, True), ("scheduled", 121, False),
    ("manual", 10_000, True), ("DagRunType.SCHEDULED", 500, False),
])
def test_a_scheduled_run_that_starts_after_its_window_does_nothing(run_type, late_minutes, runs):
    from operators.gates import within_window

    saturday = datetime(2026, 12, 5, 2, 0, tzinfo=timezone.utc)
    assert within_window(run_type, str(saturday), 120, now=saturday + timedelta(minutes=late_minutes)) is runs


def validate(dag, conf):
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    serialized.params.deep_merge(conf).validate()


def test_defaults_and_a_full_conf_are_valid(dagbag):
    validate(dagbag.dags["node_maintenance"], {})
    validate(dagbag.dags["node_maintenance"], {
        "maintenance_label": {"maintenance": "scheduled"}, "target_selector": {"pool": "blue"},
        "extra_selector": {"team": "web"}, "ready_label": {"maintenance": "ready"}, "allow_local_storage": True,
        "dry_run": True, "timeout_seconds": 300, "eviction_timeout_seconds": 30,
        "release_targets": {"default/demo": {"demo": "node2"}}})
    validate(dagbag.dags["end_maintenance"], {"maintenance_label": {"maintenance": "ready"}})


@pytest.mark.parametrize("conf,field", [
    ({"maintenance_label": {}}, "maintenance_label"),
    ({"target_selector": {"pool": "a b"}}, "target_selector"),
    ({"extra_selector": "team=web"}, "extra_selector"),
    ({"dry_run": "yes"}, "dry_run"),
    ({"eviction_timeout_seconds": 1}, "eviction_timeout_seconds"),
    ({"release_targets": {"demo": {"demo": "node2"}}}, "release_targets"),
    ({"release_targets": {"default/demo": {"demo": "a b"}}}, "release_targets"),
])
def test_invalid_conf_is_refused_at_trigger_time_naming_the_field(dagbag, conf, field):
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {field}"):
        validate(dagbag.dags["node_maintenance"], conf)
