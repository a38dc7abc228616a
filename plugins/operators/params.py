"""DAG params from k8smove.params' JSON schemas."""
from __future__ import annotations

from airflow.sdk import Param


def dag_params(schemas: dict[str, dict]) -> dict[str, Param]:
    return {name: Param(**schema) for name, schema in schemas.items()}
