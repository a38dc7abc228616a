"""The fault-injection suite's fixtures: a release deployed by the engine, watchers that place a fault at a step
of a real `airflow dags test migrate_app` run, and that run as a process a test can kill.

The helpers are in fault_support.py; tests/dags/conftest.py's fixtures (dags_test, report_dir) are reused, not
copied.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "dags"))
sys.path.insert(0, str(TESTS / "operators"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# tests/dags/conftest.py's fixtures, under a name of their own (every conftest module is called "conftest")
_dags_conftest = _load("faults_dags_conftest", TESTS / "dags" / "conftest.py")
airflow_cli, airflow_home = _dags_conftest.airflow_cli, _dags_conftest.airflow_home
dags_test, report_dir = _dags_conftest.dags_test, _dags_conftest.report_dir

from fault_support import When  # noqa: E402
from k8smove.kube import wait_for  # noqa: E402
from kubesim_release import deployed as deploy_by_engine, pods_by_component  # noqa: E402
from scripts.local_airflow import airflow_environ  # noqa: E402


@pytest.fixture(scope="package")
def faults_control_plane(tmp_path_factory):
    """A real control plane of this suite's own whose node-monitor-grace-period is 5 s (50 s by default; the nodes
    renew their Leases each second): a dead target shows NotReady within a move's timeout."""
    import random

    from kubesim.addresses import service_cidr
    from kubesim.controlplane import ControlPlane

    with ControlPlane(work_dir=str(tmp_path_factory.mktemp("faults-controlplane")), node_monitor_grace_seconds=5.0,
                      service_cidr=service_cidr(random.randint(2, 254))) as control_plane:
        yield control_plane


@pytest.fixture
def cluster(tmp_path, faults_control_plane):
    """tests/conftest.py's cluster on this suite's control plane (reset to fresh after each test), its clients
    behind the faults proxy (api-error, api-latency)."""
    from kubesim.cluster import Cluster

    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0, heartbeat_seconds=1.0,
                 node_monitor_grace_seconds=5.0, control_plane="real", shared_control_plane=faults_control_plane,
                 api_faults=True, work_dir=str(tmp_path / "kubesim"),
                 kubeconfig_path=str(tmp_path / "kubeconfig")) as c:
        yield c


@pytest.fixture
def release(cluster, kube_client):
    """The demo release Ready on node1 (placed by the move engine, as deploy_app does); yields its URL."""
    from kubernetes.client import CoreV1Api

    # the kubelets register their Nodes as they start: on a loaded machine after the cluster is up
    wait_for(lambda: len([n for n in CoreV1Api(kube_client).list_node().items if any(
        c.type == "Ready" and c.status == "True" for c in n.status.conditions or ())]) == 2 or None, 60,
        "both nodes Ready")
    values = deploy_by_engine(cluster, kube_client)
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}
    return f"http://{values['external_ip']}:{values['port']}/"


@pytest.fixture
def when():
    """``when(condition, act)``: a started When; every one is stopped at the end of the test."""
    started = []

    def start(condition, act, timeout: float = 240) -> When:
        watcher = When(condition, act, timeout)
        watcher.start()
        started.append(watcher)
        return watcher
    yield start
    for watcher in started:
        watcher.finish()


@pytest.fixture
def migrate_process(cluster, report_dir, airflow_home):
    """``start(conf, at)``: migrate_app's run at ``at`` (tests/faults/same_run.py: `dags test` with a fixed
    run_after) as a process group of its own, so a test can kill it (SIGKILL, the task process with it) and start
    the same run again (same run_id: the same lock holder)."""
    started = []

    def start(conf: dict, at: str) -> subprocess.Popen:
        env = {**os.environ, **airflow_environ(airflow_home, cluster.kubeconfig_path),
               "K8SMOVE_REPORT_DIR": str(report_dir)}
        process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("same_run.py")), "migrate_app", at,
                                    json.dumps(conf)], env=env, cwd=str(TESTS.parent), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        return process
    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
