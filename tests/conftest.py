"""Shared fixtures: a kubesim cluster (the embedded default) reached through its kubeconfig."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "plugins"))


@pytest.fixture
def cluster(tmp_path):
    """A fresh two-node cluster with fast pod startup, real processes and real service proxies."""
    from kubesim.cluster import Cluster

    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0,
                 work_dir=str(tmp_path / "kubesim"), kubeconfig_path=str(tmp_path / "kubeconfig")) as c:
        yield c


@pytest.fixture
def kube_client(cluster):
    """The real `kubernetes` client configured from kubesim's kubeconfig."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=cluster.kubeconfig_path)
    yield api_client
    api_client.close()
