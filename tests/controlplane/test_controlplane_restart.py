"""ControlPlane.restart: a component killed and started again keeps its port, certificates and data (a control plane
of this test's own: the module's shared one must not go down under other tests)."""
from __future__ import annotations

import subprocess
import time

import pytest

from kubesim.controlplane import ControlPlane


def kubectl(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", cp.kubeconfig_path, *args], capture_output=True, text=True,
                          timeout=60)


def test_a_restarted_api_server_and_etcd_keep_their_ports_and_data(tmp_path):
    with ControlPlane(work_dir=str(tmp_path / "cp")) as cp:
        assert kubectl(cp, "create", "namespace", "before-restart").returncode == 0
        listening, pids = cp.listening_sockets(), cp.pids()
        for component in ("kube-apiserver", "etcd"):
            killed_at = time.monotonic()
            seconds = cp.restart(component, down_seconds=1.0)
            assert 1.0 <= seconds <= time.monotonic() - killed_at + 0.01
            assert cp.pids()[component] != pids[component]
            assert cp.listening_sockets()[component] == listening[component]
            # ready again when restart() returns: the API server answers from the same etcd data
            got = kubectl(cp, "get", "namespace", "before-restart", "-o", "name")
            assert got.stdout.strip() == "namespace/before-restart", got.stderr
        assert kubectl(cp, "create", "namespace", "after-restart").returncode == 0
        assert {n: p for n, p in cp.pids().items() if n not in ("kube-apiserver", "etcd")} == \
            {n: p for n, p in pids.items() if n not in ("kube-apiserver", "etcd")}


def test_restart_names_the_components_it_knows(tmp_path):
    with pytest.raises(ValueError, match="component must be one of etcd, kube-apiserver"):
        ControlPlane(work_dir=str(tmp_path / "cp")).restart("kube-proxy")
