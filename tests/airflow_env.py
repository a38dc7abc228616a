"""Airflow for tests: a throw-away AIRFLOW_HOME (sqlite, migrated once per session) that loads this repo's
dags/ and plugins/, and a ``kubernetes_default`` connection pointing at a kubesim kubeconfig.

Importing this module sets the environment of the current process before Airflow is imported (Airflow
reads AIRFLOW_HOME on import); subprocesses get the same environment from ``airflow_environ``. Use from a
conftest: ``from airflow_env import airflow_home, airflow_cli  # noqa: F401`` (fixtures), then
``airflow_cli("dags", "test", "deploy_app", "--conf", json.dumps(conf), kubeconfig=cluster.kubeconfig_path)``.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
HOME = tempfile.mkdtemp(prefix="k8smove-airflow-")
atexit.register(shutil.rmtree, HOME, ignore_errors=True)


def airflow_environ(kubeconfig: str | None = None) -> dict[str, str]:
    """Environment for Airflow against this repo (and, with ``kubeconfig``, against that cluster)."""
    env = {
        "AIRFLOW_HOME": HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    if kubeconfig:
        env["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": kubeconfig}})
    return env


os.environ.update(airflow_environ())


@pytest.fixture(scope="session")
def airflow_home() -> str:
    """The session's AIRFLOW_HOME, its sqlite metadata DB migrated."""
    subprocess.run([AIRFLOW, "db", "migrate"], env={**os.environ, **airflow_environ()}, check=True,
                   capture_output=True, timeout=600)
    return HOME


@pytest.fixture
def airflow_cli(airflow_home):
    """Run ``airflow <args>``; returns the CompletedProcess (stdout and stderr merged into ``.stdout``)."""
    def run(*args: str, kubeconfig: str | None = None, timeout: float = 600,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **airflow_environ(kubeconfig), **(extra_env or {})}
        return subprocess.run([AIRFLOW, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, cwd=ROOT)
    return run
