"""The deployment artefacts at the repo root (docker-compose.yaml, docker/, .env.example, include/rbac/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_env import airflow_cli, airflow_home  # noqa: E402,F401  (fixtures)
