"""The real control plane (kubesim.controlplane), started once for the whole session."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kubectl_support import kubectl_runner  # noqa: E402


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    from kubesim.controlplane import ControlPlane

    work = tmp_path_factory.mktemp("controlplane")
    # PodTemplates without the API server's watch cache: their watches go to etcd, so after an etcd compaction
    # a watch from an old resourceVersion really answers 410 Gone (test_remote_store.py; the watch cache would
    # replay its history instead).
    with ControlPlane(work_dir=str(work / "work"), kubeconfig_path=str(work / "admin.kubeconfig"),
                      apiserver_args=("--watch-cache-sizes=podtemplates#0",)) as cp:
        yield cp


@pytest.fixture(scope="session")
def kubectl(control_plane, tmp_path_factory):
    """Run the kubectl on PATH against the control plane as admin; check=True asserts exit 0."""
    home = str(tmp_path_factory.mktemp("kubectl-home"))  # its own discovery cache
    return kubectl_runner(control_plane.kubeconfig_path, home, default_timeout=60)


@pytest.fixture(scope="session")
def api_client(control_plane):
    """The kubernetes Python client over HTTPS with the admin's client certificate."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=control_plane.kubeconfig_path)
    yield client
    client.close()
