"""Airflow for tests: a throw-away AIRFLOW_HOME (sqlite, migrated once per session) that loads this repo's
dags/ and plugins/, and a ``kubernetes_default`` connection pointing at a kubesim kubeconfig.

Importing this module sets the environment of the current process before Airflow is imported (Airflow
reads AIRFLOW_HOME on import); subprocesses get the same environment from ``airflow_environ``. Use from a
conftest: ``from airflow_env import airflow_home, airflow_cli  # noqa: F401`` (fixtures), then
``airflow_cli("dags", "test", "deploy_app", "--conf", json.dumps(conf), kubeconfig=cluster.kubeconfig_path)``.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile

import pytest

from scripts import local_airflow
from scripts.local_airflow import AIRFLOW

HOME = tempfile.mkdtemp(prefix="k8smove-airflow-")
atexit.register(shutil.rmtree, HOME, ignore_errors=True)


def airflow_environ(kubeconfig: str | None = None) -> dict[str, str]:
    """Environment for the session's Airflow against this repo (and, with ``kubeconfig``, that cluster)."""
    return local_airflow.airflow_environ(HOME, kubeconfig)


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
        return local_airflow.run_airflow({**airflow_environ(kubeconfig), **(extra_env or {})}, *args,
                                         timeout=timeout)
    return run
