"""The migration report page (k8smove.report_page): what the timeline draws from a report, and that nothing in a
report can inject markup."""
from __future__ import annotations

import re

from k8smove.report_page import render, timeline_svg

STEPS = {
    "preflight": {"state": "success", "duration_s": 1.0, "started_at": "2026-12-02T10:00:00+00:00",
                  "ended_at": "2026-12-02T10:00:01+00:00"},
    "move": {"state": "success", "duration_s": 4.0, "started_at": "2026-12-02T10:00:02+00:00",
             "ended_at": "2026-12-02T10:00:06+00:00"},
    "rollback": {"state": "skipped"},
}
START = 1796205601.0   # 2026-12-02T10:00:01Z


def report(**overrides) -> dict:
    return {"release": "default/demo", "outcome": "moved", "reason": None, "steps": STEPS,
            "pods_before": {"node1": ["a", "b"]}, "pods_after": {"node2": ["c", "d"]},
            "probe": {"sent": 100, "failed": 2, "max_gap_ms": 400, "latency_ms": {"p99": 12},
                      "started_at": START, "duration_s": 6.0,
                      "placements": [{"pod": "a", "node": "node1", "at_s": 0.1}, {"pod": "c", "node": "node2",
                                                                                 "at_s": 3.5}],
                      "timeline": {"bucket_s": 0.5, "buckets": [[0, 10, 0, 2, 0], [6, 8, 2, 0, 1], [7, 10, 0, 3, 0]]},
                      "writes": {"sent": 6, "failed": 1, "max_stall_ms": 900}},
            "db": {"rows_acknowledged": 5, "rows_present": 5, "rows_lost": 0},
            "db_switchover": {"write_pause_ms": 190, "fence_ms": 60, "switchover_ms": 220}, **overrides}


def test_the_timeline_draws_each_timed_step_each_bucket_and_each_answering_node():
    svg = timeline_svg(report())
    assert re.findall(r'class="step" data-task="(\w+)" data-state="(\w+)"', svg) == [
        ("preflight", "success"), ("move", "success")]         # rollback never ran: no bar
    assert svg.count('class="read-ok"') == 3 and svg.count('class="read-failed"') == 1
    assert svg.count('class="write-ok"') == 2 and svg.count('class="write-failed"') == 1
    assert re.findall(r'class="node" data-node="(\w+)"', svg) == ["node1", "node2"]
    # move (10:00:02 to :06) starts one second after the probe (10:00:01) and ends at the probe's end
    move = re.search(r'data-task="move"[^>]* x="([\d.]+)"[^>]* width="([\d.]+)"', svg)
    preflight = re.search(r'data-task="preflight"[^>]* x="([\d.]+)"', svg)
    assert float(preflight.group(1)) == 150.0 and float(move.group(1)) > float(preflight.group(1))


def test_the_page_shows_the_outcome_and_the_proof():
    page = render("migrate_app", "manual__1", report())
    assert '<span class="outcome good">moved</span>' in page
    assert "100 sent, 2 failed, longest gap 400 ms" in page and "5 acknowledged, 5 present, 0 lost" in page
    assert "writes paused 190 ms" in page
    failed = render("migrate_app", "manual__2", report(outcome="rolled_back", reason="move failed: timeout"))
    assert '<span class="outcome bad">rolled_back</span>' in failed and "move failed: timeout" in failed


def test_a_maintenance_run_shows_each_release():
    page = render("node_maintenance", "scheduled__1", {
        "outcome": "done", "reason": None, "step_times": STEPS,
        "releases": {"default/demo": report(), "shop/cart": report(outcome="disrupted", reason="2 failed requests")},
        "workload_moves": [{"workload": "Deployment shop/web", "mode": "surge", "pods": ["shop/web-1"]}],
        "evicted": {"evicted": ["shop/bare"], "blocked": {"shop/db-0": "PodDisruptionBudget allows no disruption"}},
        "refused": [{"workload": "StatefulSet shop/cache", "reason": "node-local volume"}]})
    assert page.count('<section class="release">') == 2
    workloads = page[page.index('<section class="workloads">'):]
    for text in ("Deployment shop/web", "surge: shop/web-1", "shop/bare</th><td>evicted",
                 "eviction blocked: PodDisruptionBudget allows no disruption",
                 "StatefulSet shop/cache</th><td>refused: node-local volume"):
        assert text in workloads, text
    assert "default/demo" in page and "shop/cart" in page and '<span class="outcome bad">disrupted</span>' in page


def test_nothing_in_a_report_becomes_markup():
    hostile = "<script>alert(1)</script>"
    page = render(hostile, hostile, report(reason=hostile, pods_after={hostile: [hostile]}, release=hostile))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_report_without_times_says_so():
    assert "No timeline" in timeline_svg({"steps": {"plan": {"state": "success"}}})
