"""Shared fixtures: a kubesim cluster (the embedded default) reached through its kubeconfig."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "plugins"))


@pytest.fixture(scope="session")
def shared_control_plane(tmp_path_factory):
    """One real control plane for the session (≈ 10 s to start); each `cluster` resets it to fresh."""
    import random

    from kubesim.addresses import service_cidr
    from kubesim.controlplane import ControlPlane

    with ControlPlane(work_dir=str(tmp_path_factory.mktemp("controlplane")),
                      service_cidr=service_cidr(random.randint(2, 254))) as control_plane:
        yield control_plane


@pytest.fixture
def control_plane_kind():
    """The API server under the `cluster` fixture: the real control plane (kubesim's kubelets as its nodes), as
    users run; tests/kubesim, which tests kubesim's own API server and controllers, overrides it."""
    return "real"


@pytest.fixture
def api_faults():
    """Whether the `cluster` on the real control plane puts the faults proxy in front of it (api-* faults): a test
    that injects them parametrizes this True; the others go to the API server directly."""
    return False


@pytest.fixture
def cluster(tmp_path, control_plane_kind, api_faults, request):
    """A fresh two-node cluster with fast pod startup, real processes and real service proxies."""
    from kubesim.cluster import Cluster

    shared = request.getfixturevalue("shared_control_plane") if control_plane_kind == "real" else None
    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0,
                 control_plane=control_plane_kind, shared_control_plane=shared, api_faults=api_faults,
                 work_dir=str(tmp_path / "kubesim"), kubeconfig_path=str(tmp_path / "kubeconfig")) as c:
        yield c


@pytest.fixture
def kube_client(cluster):
    """The real `kubernetes` client configured from kubesim's kubeconfig."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=cluster.kubeconfig_path)
    yield api_client
    api_client.close()
