import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))

from airflow_env import airflow_cli, airflow_home  # noqa: E402,F401  (fixtures)


@pytest.fixture
def report_dir(tmp_path):
    return tmp_path / "reports"


@pytest.fixture
def dags_test(airflow_cli, cluster, report_dir):
    def run(dag_id: str, conf: dict, **kwargs):
        return airflow_cli("dags", "test", dag_id, "--conf", json.dumps(conf), kubeconfig=cluster.kubeconfig_path,
                           extra_env={"K8SMOVE_REPORT_DIR": str(report_dir)}, **kwargs)
    return run
