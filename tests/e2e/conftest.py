"""The real scheduler path: Airflow's api-server, scheduler, dag-processor and triggerer as separate processes
(scripts/airflow_stack.py: LocalExecutor, SQLite metadata DB in a throw-away AIRFLOW_HOME) against one cluster
per module: the real control plane with kubesim's nodes.

The components need ``kubernetes_default`` (the cluster's kubeconfig) in their environment when they start,
so the cluster is module-scoped here too (``cluster`` and ``kube_client`` override the function-scoped ones of
tests/conftest.py for this directory only).

Auth: the simple auth manager with ``[core] simple_auth_manager_all_admins`` — its middleware adds an admin
JWT to every request, so the REST API v2 needs no credentials here (test-local config, nothing hard-coded).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.airflow_stack import _group_alive, leftovers, start_stack  # noqa: E402

@pytest.fixture(scope="module")
def cluster(tmp_path_factory, shared_control_plane):
    """One two-node cluster for the module, on the real control plane: the Airflow components are started
    pointing at its kubeconfig."""
    from kubesim.cluster import Cluster

    work = tmp_path_factory.mktemp("kubesim")
    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0, control_plane="real",
                 shared_control_plane=shared_control_plane,
                 work_dir=str(work / "cluster"), kubeconfig_path=str(work / "kubeconfig")) as c:
        yield c


@pytest.fixture(scope="module")
def kube_client(cluster):
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=cluster.kubeconfig_path)
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def airflow_extra_env() -> dict[str, str]:
    """Variables added to the components' environment (after the stack's own). Override it in a test module
    (a module-scoped fixture of the same name) to start that module's stack differently, e.g. with
    ``K8SMOVE_MAINTENANCE_SCHEDULE``, which the dag-processor reads when it parses node_maintenance."""
    return {}


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, cluster, airflow_extra_env):
    home = tmp_path_factory.mktemp("airflow-home")
    stack = start_stack(home, cluster.kubeconfig_path, extra=airflow_extra_env)
    try:
        yield stack
    finally:
        stack.stop()
        assert not any(_group_alive(p.pid) for p in stack.processes.values())
        # Anything else this stack started is killed by pid so nothing leaks, and reported as a failure.
        left = leftovers(stack)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert left == [], f"processes left behind: {left}"
