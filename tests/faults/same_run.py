"""`airflow dags test` with a fixed run_after, so that a second call is the same DAG run (same run_id, so the same
lock holder), as when a person clears a run's tasks after its worker died; the CLI takes run_after from the clock.

Usage: python same_run.py DAG_ID RUN_AFTER(ISO 8601) CONF_JSON; exits 0 when the run succeeded.
"""
import json
import sys
from datetime import datetime

from airflow.utils.cli import get_bagged_dag

dag_id, at, conf = sys.argv[1], datetime.fromisoformat(sys.argv[2]), json.loads(sys.argv[3])
run = get_bagged_dag(None, dag_id).test(run_after=at, logical_date=at, run_conf=conf)
sys.exit(0 if run.state == "success" else 1)
