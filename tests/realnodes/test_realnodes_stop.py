"""Cluster(control_plane="real").stop() leaves no pod process behind."""
from __future__ import annotations

import pytest

from tests.kubesim.dataplane_support import alive_in, pod_processes
from waiting import wait_for

from kubectl_support import kubectl_runner
from realnodes_support import REAL

pytestmark = pytest.mark.slow


def test_stop_leaves_no_pod_process(tmp_path):
    from kubesim.cluster import Cluster

    cluster = Cluster(work_dir=str(tmp_path / "kubesim"), kubeconfig_path=str(tmp_path / "admin.kubeconfig"), **REAL)
    with cluster:
        kubectl = kubectl_runner(cluster.kubeconfig_path, str(tmp_path))
        kubectl("create", "deployment", "web", "--image=nginx", "--replicas=2", "--port=8080")
        kubectl("rollout", "status", "deployment/web", "--timeout=90s")
        pods = kubectl.json("get", "pods", "-l", "app=web")["items"]
        procs = set().union(*(pod_processes(p["metadata"]["uid"]) for p in pods))
        assert len(pods) == 2 and len(procs) >= 2
        cp_pids = cluster.control_plane.pids()
        assert set(cp_pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    assert not alive_in(procs)
    wait_for(lambda: not any(_alive(pid) for pid in cp_pids.values()), timeout=5, what="control plane gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
