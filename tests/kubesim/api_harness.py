"""Fixtures for the API server tests: a Store plus ApiServer (no controllers) and real clients on it.

Test modules import the fixtures (`from api_harness import api, client`) so they do not depend on
what conftest.py files define.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

import pytest
import yaml

from kubesim.apiserver.server import ApiServer
from kubesim.cluster import SYSTEM_NAMESPACES, kubeconfig_document
from kubesim.config import ClusterConfig
from kubesim.resources import NAMESPACES, NODES
from kubesim.store import Store


def node_object(name: str, index: int) -> dict:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                       "addresses": [{"type": "InternalIP", "address": f"127.0.1.{index}"},
                                     {"type": "Hostname", "address": name}],
                       "nodeInfo": {"kubeletVersion": "v1.32.4", "osImage": "kubesim", "kernelVersion": "6.1.0",
                                    "containerRuntimeVersion": "kubesim://1.0"}}}


@dataclass
class ApiHarness:
    store: Store
    server: ApiServer
    url: str
    kubeconfig: str
    home: str

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # A private HOME keeps kubectl's discovery cache from leaking between tests.
        result = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input,
                                capture_output=True, text=True, timeout=60, env={"HOME": self.home,
                                                                                  "PATH": _path()})
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


def _path() -> str:
    import os
    return os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")


@pytest.fixture
def api(tmp_path):
    store = Store()
    for name in SYSTEM_NAMESPACES:
        store.create(NAMESPACES, {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
    for index, name in enumerate(("node1", "node2"), start=1):
        store.create(NODES, node_object(name, index))
    server = ApiServer(store, ClusterConfig())
    url = server.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(url)))
    home = tmp_path / "home"
    home.mkdir()
    try:
        yield ApiHarness(store, server, url, str(kubeconfig), str(home))
    finally:
        server.stop()
        store.close()


@pytest.fixture
def client(api):
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=api.kubeconfig)
    yield api_client
    api_client.close()
