"""The words a report ends with: each outcome from the steps' states and the move's own outcome."""
from __future__ import annotations

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
