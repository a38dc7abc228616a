"""A Store with the ControllerManager running on it, seeded like kubesim.cluster does, for controller tests."""
from __future__ import annotations

import functools

import pytest

from kubesim.config import ClusterConfig
from kubesim.controllers import ControllerManager
from kubesim.resources import NAMESPACES, NODES, STORAGECLASSES
from kubesim.runtime import SimulatedRuntime
from kubesim.store import Store

import waiting

STORAGE_CLASSES = (
    {"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
     "provisioner": "kubesim.io/network", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"},
    {"metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path", "reclaimPolicy": "Delete",
     "volumeBindingMode": "WaitForFirstConsumer"},
)


def seeded_store() -> Store:
    store = Store()
    for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
        store.create(NAMESPACES, {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
    for sc in STORAGE_CLASSES:
        store.create(STORAGECLASSES, sc)
    return store


def fast_config(tmp_path, **overrides) -> ClusterConfig:
    values = dict(nodes=["node1", "node2"], network_id=1, pod_startup_seconds=0.1, max_grace_seconds=0.2, heartbeat_seconds=0.3,
                  node_monitor_grace_seconds=1.0, work_dir=str(tmp_path), probe_poll_seconds=0.05)
    values.update(overrides)
    return ClusterConfig(**values)


wait_for = functools.partial(waiting.wait_for, timeout=10.0)

def start_manager(store: Store, config: ClusterConfig, runtime=None, faults=None) -> ControllerManager:
    return ControllerManager(store, config, runtime or SimulatedRuntime(), faults).start()


@pytest.fixture
def cluster(tmp_path):
    """A seeded store with every controller running on two nodes (SimulatedRuntime)."""
    store = seeded_store()
    manager = start_manager(store, fast_config(tmp_path))
    wait_for(lambda: len(store.list(NODES)) == 2, what="nodes")
    yield store, manager
    manager.stop()
