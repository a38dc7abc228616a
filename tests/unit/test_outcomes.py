"""The words a report ends with: each outcome from the steps' states and the move's own outcome."""
from __future__ import annotations

import json

import pytest

from k8smove.maintenance import release_target
from k8smove.report import migration_outcome

OK = {"state": "success"}
PLACED = {"node1": ["demo-app-1", "demo-db-1"]}
MOVED = {"node2": ["demo-app-2", "demo-db-2"]}


def steps(**states):
    base = {"preflight": OK, "start_probe": OK, "move": OK, "rollback": {"state": "skipped"}, "stop_probe": OK}
    return {**base, **{task: {"state": state, **({"error": f"{task} broke"} if state == "failed" else {})}
                       for task, state in states.items()}}


@pytest.mark.parametrize("states,before,after,moved,expected", [
    ({}, PLACED, MOVED, {"outcome": "moved"}, ("moved", None)),
    ({}, PLACED, PLACED, {"outcome": "moved"}, ("unchanged", None)),
    ({}, MOVED, MOVED, {"outcome": "moved", "db_switchover": {"switchover_ms": 900}}, ("moved", None)),
    ({}, None, MOVED, {"outcome": "moved"}, ("deployed", None)),
    ({"preflight": "failed", "move": "upstream_failed"}, PLACED, PLACED, None, ("refused", "preflight broke")),
    ({"move": "failed", "rollback": "skipped"}, PLACED, PLACED,
     {"outcome": "refused", "reason": "release default/demo is being moved by migrate_app/other"},
     ("refused", "release default/demo is being moved by migrate_app/other")),
    ({"move": "failed", "rollback": "success"}, PLACED, PLACED, {"outcome": "failed", "reason": "timeout"},
     ("rolled_back", "move broke (rolled back: the release runs where it ran before)")),
    ({"move": "failed", "rollback": "failed"}, PLACED, MOVED, {"outcome": "failed"}, ("failed", "move broke")),
    ({"stop_probe": "failed"}, PLACED, MOVED, {"outcome": "moved"}, ("unverified", "stop_probe broke")),
])
def test_outcome(states, before, after, moved, expected):
    assert migration_outcome(steps(**states), before, after, {"rows_lost": 0}, moved=moved) == expected


def test_lost_rows_are_data_lost_even_when_everything_succeeded():
    outcome, reason = migration_outcome(steps(), PLACED, MOVED, {"rows_lost": 2, "lost_ids": [4, 5]})
    assert outcome == "data_lost" and "[4, 5]" in reason


@pytest.mark.parametrize("current,target_selector,expected", [
    ({"demo": "node1"}, {"demo": "node2"}, {"demo": "node2"}),          # the README's flow: keys replaced
    ({"demo": "node1"}, {"pool": "blue"}, {"demo": "node1", "pool": "blue"}),
    ({"demo": "node1"}, None, {"demo": "node1"}),                       # no target: the plan refuses it
])
def test_where_maintenance_sends_a_release(current, target_selector, expected):
    assert release_target(current, target_selector) == expected


def test_failed_requests_are_reported_as_a_disruption_never_as_moved():
    probe = {"sent": 400, "failed": 3, "errors": {"TimeoutError": 3}, "max_gap_ms": 2400.0}
    outcome, reason = migration_outcome(steps(), PLACED, MOVED, {"rows_lost": 0}, probe=probe)
    assert outcome == "disrupted"
    assert reason == "3 of 400 requests failed during the move ({'TimeoutError': 3}; longest gap 2400.0 ms)"


def test_reports_go_to_a_directory_or_any_object_storage_url(tmp_path):
    """Issue 12 item 2: the report task writes through Airflow's ObjectStoragePath, so every worker of a distributed
    executor writes to one place (s3://, gs://, ...); a plain directory and the default become file:// URLs."""
    from airflow.sdk import ObjectStoragePath

    from k8smove.report import report_location, write_report

    assert report_location({"K8SMOVE_REPORT_DIR": "s3://bucket/moves"}) == "s3://bucket/moves"
    assert report_location({"K8SMOVE_REPORT_DIR": str(tmp_path)}) == f"file://{tmp_path}"
    assert report_location({"AIRFLOW_HOME": "/opt/airflow"}) == "file:///opt/airflow/k8smove-reports"
    report = {"outcome": "moved", "db": {"rows_lost": 0}}
    local = write_report(report, "migrate_app", "manual__2026-12-02T10:00:00+00:00",
                         ObjectStoragePath(report_location({"K8SMOVE_REPORT_DIR": str(tmp_path / "r")})))
    assert local == f"file://{tmp_path}/r/migrate_app__manual__2026-12-02T10_00_00_00_00.json"
    assert json.loads((tmp_path / "r" / "migrate_app__manual__2026-12-02T10_00_00_00_00.json").read_text()) == report
    # fsspec's in-memory filesystem stands in for a bucket: nothing local is involved
    remote = write_report(report, "node_maintenance", "scheduled__x", ObjectStoragePath("memory://bucket/moves"))
    assert remote == "memory://bucket/moves/node_maintenance__scheduled__x.json"
    assert json.loads(ObjectStoragePath(remote).read_text()) == report
