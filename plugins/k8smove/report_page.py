"""The migration report as a page: a timeline (steps, requests, writes, the answering node) and the proof, drawn as
inline SVG from the report dict alone (no script, no external asset), so any run's XCom can be shown anywhere."""
from __future__ import annotations

from datetime import datetime
from html import escape

WIDTH, LEFT, ROW = 960, 150, 26
NODE_COLOURS = ("#2e86c1", "#af7ac5", "#16a085", "#d68910", "#5d6d7e", "#c0392b")
GOOD_OUTCOMES = ("moved", "deployed", "unchanged", "dry_run", "done")


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _span(report: dict) -> tuple[float, float] | None:
    """The timeline's [start, end] in epoch seconds: the steps' and the probe's extent."""
    points = []
    for step in (report.get("steps") or {}).values():
        points += [t for t in (_epoch(step.get("started_at")), _epoch(step.get("ended_at"))) if t]
    probe = report.get("probe") or {}
    if probe.get("started_at"):
        points += [probe["started_at"], probe["started_at"] + (probe.get("duration_s") or 0)]
    return (min(points), max(points)) if len(points) >= 2 and max(points) > min(points) else None


def timeline_svg(report: dict) -> str:
    """Rows: each step's bar (coloured by state); reads per bucket (green answered, red failed); writes
    acknowledged per bucket, with the longest stall; the node that answered, over time."""
    span = _span(report)
    if span is None:
        return '<p class="empty">No timeline: this run recorded no step times and no probe.</p>'
    start, end = span
    scale = (WIDTH - LEFT - 10) / (end - start)

    def x(t: float) -> float:
        return round(LEFT + (t - start) * scale, 1)

    parts, y = [], 10
    colours = {"success": "#27ae60", "failed": "#c0392b", "skipped": "#bdc3c7", "upstream_failed": "#e67e22"}
    for task, step in (report.get("steps") or {}).items():
        begun, ended = _epoch(step.get("started_at")), _epoch(step.get("ended_at"))
        parts.append(f'<text x="4" y="{y + 14}" class="label">{escape(task)}</text>')
        if begun and ended:
            parts.append(f'<rect class="step" data-task="{escape(task)}" data-state="{escape(step.get("state", ""))}" '
                         f'x="{x(begun)}" y="{y + 3}" width="{max(2.0, x(ended) - x(begun))}" height="{ROW - 8}" '
                         f'fill="{colours.get(step.get("state"), "#95a5a6")}"><title>{escape(task)}: '
                         f'{escape(step.get("state", ""))}, {step.get("duration_s")} s</title></rect>')
        y += ROW
    probe = report.get("probe") or {}
    timeline = probe.get("timeline") or {}
    if timeline.get("buckets"):
        base, size = probe["started_at"], timeline["bucket_s"]
        peak = max(max(b[1] + b[2] for b in timeline["buckets"]), 1)
        writes_peak = max(max(b[3] + b[4] for b in timeline["buckets"]), 1)
        parts.append(f'<text x="4" y="{y + 14}" class="label">requests</text>')
        parts.append(f'<text x="4" y="{y + ROW + 14}" class="label">writes</text>')
        parts.append(f'<text x="4" y="{y + 2 * ROW + 14}" class="label">answered by</text>')
        for index, reads_ok, reads_failed, writes_ok, writes_failed in timeline["buckets"]:
            left, w = x(base + index * size), max(1.0, size * scale - 0.5)
            for value, total, top, cls in ((reads_ok, peak, y, "read-ok"), (writes_ok, writes_peak, y + ROW, "write-ok")):
                if value:
                    h = round((ROW - 6) * value / total, 1)
                    parts.append(f'<rect class="{cls}" x="{left}" y="{top + ROW - 3 - h}" width="{w}" height="{h}"/>')
            for value, top, cls in ((reads_failed, y, "read-failed"), (writes_failed, y + ROW, "write-failed")):
                if value:
                    parts.append(f'<rect class="{cls}" x="{left}" y="{top + 3}" width="{w}" height="{ROW - 6}">'
                                 f'<title>{value} failed</title></rect>')
        placements = probe.get("placements") or []
        nodes = list(dict.fromkeys(p.get("node") for p in placements))
        for i, placement in enumerate(placements):
            begun = base + placement["at_s"]
            ended = base + placements[i + 1]["at_s"] if i + 1 < len(placements) else base + probe.get("duration_s", 0)
            colour = NODE_COLOURS[nodes.index(placement.get("node")) % len(NODE_COLOURS)]
            parts.append(f'<rect class="node" data-node="{escape(str(placement.get("node")))}" x="{x(begun)}" '
                         f'y="{y + 2 * ROW + 3}" width="{max(1.0, x(ended) - x(begun))}" height="{ROW - 8}" '
                         f'fill="{colour}"><title>{escape(str(placement.get("pod")))} on '
                         f'{escape(str(placement.get("node")))}</title></rect>')
            parts.append(f'<text x="{x(begun) + 3}" y="{y + 2 * ROW + 15}" class="on-bar">'
                         f'{escape(str(placement.get("node")))}</text>')
        y += 3 * ROW
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 10}" y1="{y + 4}" y2="{y + 4}" class="axis"/>')
    for tick in range(0, int(end - start) + 1, max(1, int((end - start) / 10) or 1)):
        parts.append(f'<text x="{x(start + tick)}" y="{y + 18}" class="tick">{tick} s</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{y + 26}" '
            f'role="img" aria-label="timeline of the run">{"".join(parts)}</svg>')


def _table(rows: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _placement(pods: dict | None) -> str:
    """node -> pods as "node1: a, b; node2: c"."""
    return "; ".join(f"{node or 'unscheduled'}: {', '.join(names)}" for node, names in (pods or {}).items()) or "none"


def release_section(title: str, report: dict) -> str:
    probe, db, writes = report.get("probe") or {}, report.get("db") or {}, (report.get("probe") or {}).get("writes") or {}
    switch = report.get("db_switchover") or {}
    outcome = report.get("outcome")
    rows = [("pods before", _placement(report.get("pods_before"))), ("pods after", _placement(report.get("pods_after")))]
    if probe:
        rows += [("requests", f"{probe.get('sent')} sent, {probe.get('failed')} failed, longest gap "
                              f"{probe.get('max_gap_ms')} ms, p99 {(probe.get('latency_ms') or {}).get('p99')} ms"),
                 ("writes", f"{writes.get('sent')} sent, {writes.get('failed')} not acknowledged, longest stall "
                            f"{writes.get('max_stall_ms')} ms")]
    if db:
        rows.append(("rows", f"{db.get('rows_acknowledged')} acknowledged, {db.get('rows_present')} present, "
                             f"{db.get('rows_lost')} lost"))
    if switch:
        rows.append(("DB switchover", f"writes paused {switch.get('write_pause_ms')} ms (fence {switch.get('fence_ms')} "
                                      f"ms, switchover {switch.get('switchover_ms')} ms)"))
    badge = "good" if outcome in GOOD_OUTCOMES else "bad"
    return (f'<section class="release"><h2>{escape(title)} <span class="outcome {badge}">{escape(str(outcome))}'
            f'</span></h2>' + (f'<p class="reason">{escape(str(report.get("reason")))}</p>' if report.get("reason") else "")
            + timeline_svg(report) + _table(rows) + "</section>")


def workloads_section(report: dict) -> str:
    """A maintenance run's other workloads: each planned move (surge or evict-and-recreate), the pods evicted or
    blocked, and what the plan refused to move."""
    rows = [(m["workload"], f"{m['mode']}: {', '.join(m.get('pods') or []) or 'no pods'}")
            for m in report.get("workload_moves") or []]
    evicted = report.get("evicted") or {}
    rows += [(pod, "evicted") for pod in evicted.get("evicted") or []]
    rows += [(pod, f"eviction blocked: {reason}") for pod, reason in (evicted.get("blocked") or {}).items()]
    rows += [(r.get("workload") or r.get("release") or "?", f"refused: {r.get('reason')}")
             for r in report.get("refused") or [] if isinstance(r, dict)]
    if not rows:
        return '<section class="workloads"><h2>Other workloads</h2><p>none on the nodes</p></section>'
    return '<section class="workloads"><h2>Other workloads</h2>' + _table(rows) + "</section>"


STYLE = """body{font:14px system-ui,sans-serif;margin:16px;color:#1c2833}table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d5d8dc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f4f6f7}
.outcome{padding:2px 8px;border-radius:4px;color:#fff}.good{background:#27ae60}.bad{background:#c0392b}
.label{font-size:12px}.tick{font-size:11px;fill:#566573}.axis{stroke:#566573}.on-bar{font-size:11px;fill:#fff}
.read-ok,.write-ok{fill:#58d68d}.read-failed,.write-failed{fill:#e74c3c}.reason{color:#922b21}"""


def render(dag_id: str, run_id: str, report: dict) -> str:
    """The whole page for one run: migrate_app/deploy_app (one release) or node_maintenance (each release)."""
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(dag_id)} {escape(run_id)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(dag_id)} · {escape(run_id)}</h1>")
    if "releases" in report:   # a maintenance run
        overall = report.get("outcome")
        body = (f'<p>Maintenance <span class="outcome {"good" if overall in GOOD_OUTCOMES else "bad"}">'
                f'{escape(str(overall))}</span> {escape(str(report.get("reason") or ""))}</p>'
                + timeline_svg({"steps": report.get("step_times") or {}})
                + "".join(release_section(ref, {**release, "steps": {}})
                          for ref, release in sorted((report.get("releases") or {}).items()))
                + workloads_section(report))
    else:
        body = release_section(report.get("release") or dag_id, report)
    return head + body + "</body></html>"
