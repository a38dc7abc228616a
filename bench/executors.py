"""migrate_app from trigger to done under LocalExecutor and under CeleryExecutor, interleaved in one sitting.

One kubesim (node1, node2) with one release (App + PostgreSQL) created by the move engine; two full local Airflows
against it (scripts/airflow_stack.py: api-server, scheduler with idle sleep 0.1 s, dag-processor, triggerer):
LocalExecutor on SQLite, and CeleryExecutor with a Redis broker, PostgreSQL as metadata DB and two workers with
their own homes. Each round moves the release back and forth once on each (REST trigger -> run end, from the API's
own ``queued_at``/``end_date``); every run must succeed with 0 failed requests and 0 rows lost.
"""
from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path

from .common import Result, cluster
from .evacuation import deploy_releases
from .move_latency import timed_run

ROUNDS = 5
COMMAND = "make bench BENCH=executors   # or: .venv/bin/python -m bench executors"


def run() -> Result:
    import logging

    from scripts.airflow_stack import DAG_IDS, start_stack

    logging.getLogger("k8smove").setLevel(logging.WARNING)
    result = Result("migrate_app under LocalExecutor and CeleryExecutor", COMMAND)
    seconds = {"local": [], "celery": []}
    proof = {"local": [], "celery": []}
    with cluster(nodes=["node1", "node2"], pod_startup_seconds=0.5, max_grace_seconds=2.0) as c:
        deploy_releases(c, 1)
        stacks, homes = {}, []
        try:
            for name in seconds:
                home = Path(tempfile.mkdtemp(prefix=f"bench-executors-{name}-"))
                homes.append(home)
                stacks[name] = start_stack(home, c.kubeconfig_path, dag_ids=DAG_IDS, executor=name)
            node = "node1"
            for _ in range(ROUNDS):
                for name, stack in stacks.items():
                    node = "node2" if node == "node1" else "node1"
                    run_seconds, run_id = timed_run(stack, "migrate_app", {"release": "r00",
                                                                          "node_label": {"demo": node}},
                                                    with_run_id=True)
                    seconds[name].append(run_seconds)
                    report = json.loads((stack.report_dir / f"migrate_app__{run_id}.json").read_text())
                    proof[name].append((report["outcome"], report["probe"]["failed"], report["db"]["rows_lost"]))
        finally:
            for stack in stacks.values():
                stack.stop()
            for path in homes:
                shutil.rmtree(path, ignore_errors=True)

    def med(values):
        return round(statistics.median(values), 2)

    for name, label in (("local", "LocalExecutor (SQLite)"), ("celery", "CeleryExecutor, 2 workers (PostgreSQL)")):
        result.add(f"migrate_app, trigger -> done, median, {label}",
                   f"{med(seconds[name])} s (min {min(seconds[name]):.2f}, max {max(seconds[name]):.2f})")
        clean = all(p == ("moved", 0, 0) for p in proof[name])
        result.add(f"every run moved with 0 failed requests and 0 rows lost, {label}",
                   f"{sum(p == ('moved', 0, 0) for p in proof[name])} of {len(proof[name])}", "all", clean)
    result.raw = {"seconds": seconds, "proof": proof, "rounds": ROUNDS}
    result.notes.append(f"{ROUNDS} rounds, each one migrate_app on each Airflow, alternating the direction; both "
                        "with the scheduler's idle sleep 0.1 s; the DB moves by switchover.")
    return result
