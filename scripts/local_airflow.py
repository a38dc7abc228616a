"""Airflow on this machine against this repo: the environment the demo, the benchmarks and the tests share.

Airflow reads AIRFLOW_HOME and its settings from the environment, so everything here is a dict of
variables (for subprocesses) plus a runner for ``airflow <args>``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_environ(home: str | os.PathLike, kubeconfig: str | None = None,
                    report_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Variables for an Airflow whose metadata DB (sqlite) lives in ``home``, loading this repo's DAGs and
    plugins, with ``kubernetes_default`` pointing at ``kubeconfig`` when given."""
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    if kubeconfig:
        env["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}})
    if report_dir:
        env["K8SMOVE_REPORT_DIR"] = str(report_dir)
    return env


def run_airflow(env: dict[str, str], *args: str, timeout: float = 900,
                capture: bool = True) -> subprocess.CompletedProcess:
    """``airflow <args>`` with ``env`` over this process's environment; output merged into ``.stdout``."""
    return subprocess.run([AIRFLOW, *args], env={**os.environ, **env}, cwd=ROOT, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None)
