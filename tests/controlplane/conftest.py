"""The real control plane (kubesim.controlplane), started once for the whole session."""
from __future__ import annotations

import json
import os
import subprocess

import pytest


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

    def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["kubectl", "--kubeconfig", control_plane.kubeconfig_path, *args], input=input,
                              capture_output=True, text=True, timeout=60,
                              env={"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    run.json = lambda *args: json.loads(run(*args, "-o", "json").stdout)
    return run


@pytest.fixture(scope="session")
def api_client(control_plane):
    """The kubernetes Python client over HTTPS with the admin's client certificate."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=control_plane.kubeconfig_path)
    yield client
    client.close()
