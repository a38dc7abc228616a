"""kubesim's kubelets as the nodes of the real control plane: Cluster(control_plane="real"), started once per
module (the control plane takes ≈ 10 s to start)."""
from __future__ import annotations

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)  # waiting.py, and tests.kubesim.dataplane_support's own import of it

from kubectl_support import kubectl_runner  # noqa: E402
from realnodes_support import REAL  # noqa: E402


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    from kubesim.cluster import Cluster

    work = tmp_path_factory.mktemp("realnodes")
    with Cluster(work_dir=str(work / "kubesim"), kubeconfig_path=str(work / "admin.kubeconfig"), **REAL) as c:
        yield c


@pytest.fixture(scope="module")
def kubectl(real_cluster, tmp_path_factory):
    return kubectl_runner(real_cluster.kubeconfig_path, str(tmp_path_factory.mktemp("kubectl-home")))
