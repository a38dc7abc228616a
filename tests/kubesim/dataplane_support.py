"""Helpers of the data-plane tests: a store seeded like a cluster, pods, waiting, the process table."""
from __future__ import annotations

import os
import time

from kubesim import resources
from kubesim.config import ClusterConfig
from kubesim.dataplane import DataPlane
from kubesim.faults import FaultRegistry
from kubesim.store import Store
from waiting import wait_for  # noqa: F401  (re-exported for the data-plane tests)

NODES = ("node1", "node2")
STORAGE_CLASSES = ({"metadata": {"name": "standard"}, "provisioner": "kubesim.io/network"},
                   {"metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path"})


def seeded_store() -> Store:
    store = Store()
    store.create(resources.NAMESPACES, {"metadata": {"name": "default"}})
    for index, node in enumerate(NODES, start=1):
        store.create(resources.NODES, {"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                                       "status": {"addresses": [{"type": "InternalIP",
                                                                 "address": f"127.0.1.{index}"}]}})
    for storage_class in STORAGE_CLASSES:
        store.create(resources.STORAGECLASSES, storage_class)
    return store


def make_dataplane(tmp_path, images_file: str | None = None) -> tuple[Store, DataPlane, FaultRegistry]:
    store = seeded_store()
    faults = FaultRegistry(seed=1)
    config = ClusterConfig(work_dir=str(tmp_path / "work"), max_grace_seconds=2.0, images_file=images_file)
    dataplane = DataPlane(store, config, faults)
    dataplane.start()
    return store, dataplane, faults


def create_pod(store: Store, name: str, containers: list[dict], **spec) -> dict:
    return store.create(resources.PODS, {"metadata": {"name": name, "namespace": "default"},
                                         "spec": {"containers": containers, **spec}})



def container(dataplane: DataPlane, pod: dict, name: str):
    sandbox = dataplane.runtime.status(pod["metadata"]["uid"])
    return sandbox.containers[name] if sandbox else None


def wait_ready(dataplane: DataPlane, pod: dict, name: str, timeout: float = 30.0):
    return wait_for(lambda: (c := container(dataplane, pod, name)) and c.ready and c, timeout,
                    what=f"{pod['metadata']['name']}/{name} to be ready")


Process = tuple[int, str]   # (pid, start time): a pid alone could be reused


def _process_table() -> dict[int, tuple[int, str, str, bytes]]:
    """pid -> (parent pid, start time, state, environment) of every process we may read, but this one."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[19], fields[0], environ)
    return table


def pod_processes(pod_uid: str) -> set[Process]:
    """The pod's processes, found by the runtime's env marker, and all their descendants.

    Descendants are found by parent rather than by the marker or the session: PostgreSQL overwrites
    its environment area with process titles, and its children start sessions of their own."""
    table = _process_table()
    marker = f"KUBESIM_POD_UID={pod_uid}".encode()
    found = {pid for pid, (_, _, _, environ) in table.items() if marker in environ.split(b"\0")}
    while True:
        more = {pid for pid, (ppid, _, _, _) in table.items() if ppid in found} - found
        if not more:
            return {(pid, table[pid][1]) for pid in found}
        found |= more


def alive_in(processes: set[Process]) -> list[int]:
    """Those of the processes still running (not zombies)."""
    table = _process_table()
    return [pid for pid, started in processes if pid in table and table[pid][1] == started and table[pid][2] != "Z"]
