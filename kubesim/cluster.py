"""A whole simulated cluster: kubesim's own store, API server, controllers and data plane in this process
(control_plane="kubesim"), or the real control plane with kubesim's nodes (control_plane="real")."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile

import yaml

from .config import ClusterConfig
from .resources import NAMESPACES, STORAGECLASSES
from .store import Store

log = logging.getLogger("kubesim")

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# authorization.k8s.io's "may I?" questions (the request log's resource, without its group on the real API server)
ACCESS_REVIEWS = ("selfsubjectaccessreviews", "selfsubjectrulesreviews")

# The two kinds of storage a move has to reckon with: network-attached (data follows the pod) and
# node-local (data stays on its node), like a cloud disk class and local-path on kind/k3s.
# The CSI driver of the network class needs no attach step (no VolumeAttachment for an external attacher).
CSI_DRIVERS = ({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "network.kubesim.io"},
                "spec": {"attachRequired": False, "podInfoOnMount": False}},)
STORAGE_CLASSES = (
    {"metadata": {"name": "standard",
                  "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
     "provisioner": "kubesim.io/network", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
     "allowVolumeExpansion": True},
    {"metadata": {"name": "local-path"},
     "provisioner": "rancher.io/local-path", "reclaimPolicy": "Delete",
     "volumeBindingMode": "WaitForFirstConsumer"},
)


def kubeconfig_document(url: str, context: str = "kubesim") -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": context, "cluster": {"server": url}}],
        "users": [{"name": f"{context}-admin", "user": {"token": "kubesim-admin"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": f"{context}-admin",
                                                   "namespace": "default"}}],
        "current-context": context,
    }


class Cluster:
    """Start with ``with Cluster(nodes=["node1", "node2"]) as cluster:``; stops everything on exit."""

    def __init__(self, config: ClusterConfig | None = None, kubeconfig_path: str | None = None,
                 shared_control_plane=None, **overrides):
        self.config = dataclasses.replace(config or ClusterConfig(), **overrides)
        # control_plane="real" on a ControlPlane already running (tests): stop() resets it to the state this
        # cluster found (kubesim.controlplane.etcdreset) instead of stopping it.
        self.shared_control_plane = shared_control_plane
        self._own_work_dir = self.config.work_dir is None
        if self._own_work_dir:
            self.config.work_dir = tempfile.mkdtemp(prefix="kubesim-")
        self.kubeconfig_path = kubeconfig_path or os.path.join(self.config.work_dir, "kubeconfig")
        self.store: Store | None = None
        self.api = None
        self.controllers = None
        self.dataplane = None
        self.faults = None
        self.url: str | None = None
        self.control_plane = None   # control_plane="real": the ControlPlane, its admin RemoteStore and the nodes
        self.admin = None
        self.nodes = None
        self.proxy_process = None   # config.proxy_process: the proxy's process (kubesim.proxy_process)
        self.fault_proxy = None     # control_plane="real" with api_faults: what the clients' kubeconfig points at

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "Cluster":
        from .apiserver.server import ApiServer
        from .controllers import ControllerManager
        from .dataplane import DataPlane
        from .faults import FaultRegistry
        from .runtime import SimulatedRuntime

        if self.config.control_plane == "real":
            return self._start_real()
        self._route_external_addresses()
        self.store = Store(self.config.state_dir)
        self._seed()
        self.faults = FaultRegistry()
        if self.config.run_processes:
            self.dataplane = DataPlane(self.store, self.config, self.faults)
            runtime = self.dataplane.runtime
        else:
            runtime = SimulatedRuntime()
        self.runtime = runtime
        self.controllers = ControllerManager(self.store, self.config, runtime, self.faults)
        self.api = ApiServer(self.store, self.config, faults=self.faults, runtime=runtime)
        self.url = self.api.start()
        if self.dataplane and not self.config.proxy_process:
            self.dataplane.start()
        self.controllers.start()
        self.write_kubeconfig(self.kubeconfig_path)
        if self.dataplane and self.config.proxy_process:
            self.proxy_process = start_proxy_process(self.kubeconfig_path, self.config.work_dir)
        log.info("kubesim serving %s with nodes %s; kubeconfig %s", self.url, ",".join(self.config.nodes),
                 self.kubeconfig_path)
        return self

    @staticmethod
    def _route_external_addresses() -> None:
        """Services' external addresses (kubesim.addresses.EXTERNAL_RANGE) bindable here; without the privilege
        the proxy listens on a free 127.0.0.1 port instead and says where in the Service's annotation."""
        from .addresses import EXTERNAL_RANGE, ensure_local_routes

        try:
            ensure_local_routes((EXTERNAL_RANGE,))
        except RuntimeError as error:
            log.warning("%s", error)

    def _start_real(self) -> "Cluster":
        """The real control plane with kubesim's kubelets as its nodes; no kubesim API server or controllers."""
        from .addresses import ensure_local_routes, service_cidr
        from .controlplane import ControlPlane
        from .controlplane.faultproxy import FaultProxy
        from .faults import FaultRegistry
        from .realnodes import RealNodes
        from .remote import RemoteStore

        ensure_local_routes()
        api_faults = self.config.api_faults
        try:
            if self.shared_control_plane is None:
                # With the faults proxy the clients' kubeconfig is the proxy's; the control plane keeps its own.
                self.control_plane = ControlPlane(
                    work_dir=os.path.join(self.config.work_dir, "controlplane"),
                    kubeconfig_path=None if api_faults else self.kubeconfig_path,
                    node_monitor_grace_seconds=self.config.node_monitor_grace_seconds,
                    service_cidr=service_cidr(self.config.network_id)).start()
            else:
                self.control_plane = self.shared_control_plane
            self.faults = FaultRegistry(api_faults=api_faults)
            if api_faults:
                self.fault_proxy = FaultProxy(self.control_plane, self.faults).start()
                self.fault_proxy.write_kubeconfig(self.kubeconfig_path)
                self.url = self.fault_proxy.url
            else:
                if self.shared_control_plane is not None:
                    os.makedirs(os.path.dirname(os.path.abspath(self.kubeconfig_path)), exist_ok=True)
                    shutil.copyfile(self.control_plane.kubeconfig_path, self.kubeconfig_path)
                self.url = self.control_plane.url
            # kubesim's own client, as its in-process store on kubesim's API server: never struck by faults
            self.admin = RemoteStore.from_kubeconfig(self.control_plane.kubeconfig_path, user_agent="kubesim-admin")
            self._seed_real()
            if self.shared_control_plane is not None and not self.control_plane.etcd.keys:
                self.control_plane.wait_settled()
                self.control_plane.etcd.record()
            self.control_plane.audit.clear()
            self.nodes = RealNodes(self.control_plane, self.config, self.faults)
            self.nodes.start()
            self._wait_nodes_ready()
        except BaseException:
            self.stop()
            raise
        log.info("kubesim nodes %s on the real control plane %s; kubeconfig %s", ",".join(self.config.nodes),
                 self.url, self.kubeconfig_path)
        return self

    def _wait_nodes_ready(self, timeout: float = 60.0) -> None:
        """Until every node is registered and Ready, as on kubesim's API server, where they are from the start:
        a client's first call must find them."""
        import time

        from .controllers.pods import is_ready
        from .resources import NODES

        deadline = time.monotonic() + timeout
        while True:
            ready = {n["metadata"]["name"] for n in self.admin.list(NODES) if is_ready(n)}
            if set(self.config.nodes) <= ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes {sorted(set(self.config.nodes) - ready)} not Ready within {timeout:.0f} s")
            time.sleep(0.05)

    def _seed_real(self) -> None:
        """The StorageClasses, their CSI driver and their provisioner's binding (the API server makes the system
        namespaces itself)."""
        from . import errors
        from .realnodes import PROVISIONER_USER

        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "kubesim:provisioner"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "system:persistent-volume-provisioner"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PROVISIONER_USER}]}
        creates = [(lambda sc=sc: self.admin.create(STORAGECLASSES, sc)) for sc in STORAGE_CLASSES] + [
            (lambda d=d: self.admin.request("POST", "/apis/storage.k8s.io/v1/csidrivers", None, d))
            for d in CSI_DRIVERS] + [
            lambda: self.admin.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", None,
                                       binding)]
        for create in creates:
            try:
                create()
            except errors.ApiError as e:
                if e.code != 409:
                    raise

    def stop(self) -> None:
        if self.nodes is not None:      # control_plane="real": nodes, then the admin client, then the control plane
            self.nodes.stop()
        if self.admin is not None:
            self.admin.close()
        if self.control_plane is not None and self.shared_control_plane is not None:
            self.control_plane.etcd.reset()
        elif self.control_plane is not None:
            self.control_plane.stop()
        if self.fault_proxy is not None:
            self.fault_proxy.stop()
        self.nodes = self.admin = self.control_plane = self.fault_proxy = None
        if self.proxy_process is not None:
            self.proxy_process.terminate()
            self.proxy_process.wait(timeout=30)
            self.proxy_process = None
        for part in (self.controllers, self.dataplane, self.api):
            if part is not None:
                part.stop()
        if self.store is not None:
            self.store.close()
        if self._own_work_dir and self.config.work_dir:
            shutil.rmtree(self.config.work_dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- helpers for tests and the CLI ------------------------------------------------------------------
    @property
    def request_log(self) -> list[dict]:
        """What clients asked of the API server since the last clear (on the real one, from its audit log)."""
        return self.control_plane.audit.entries() if self.control_plane is not None else self.api.request_log

    def clear_request_log(self) -> None:
        if self.control_plane is not None:
            self.control_plane.audit.clear()
        else:
            self.api.clear_request_log()

    def writes(self, dry_runs: bool = True) -> list[dict]:
        """Write requests (anything but reads), as the request log saw them; ``dry_runs=False``: only the ones
        that could change the cluster (not ``dryRun=All``). An access review is a POST that is answered, never
        stored: not a write."""
        return [r for r in self.request_log if r["method"] in ("POST", "PUT", "PATCH", "DELETE")
                and r["resource"].rpartition("/")[2] not in ACCESS_REVIEWS
                and (dry_runs or r["query"].get("dryRun") != "All")]

    def write_kubeconfig(self, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            yaml.safe_dump(kubeconfig_document(self.url), f, sort_keys=False)
        return path

    def _seed(self) -> None:
        """What a fresh cluster has before anyone uses it (kept when a --state-dir already holds it)."""
        for name in SYSTEM_NAMESPACES:
            if self.store.find(NAMESPACES, None, name) is None:
                self.store.create(NAMESPACES, {"metadata": {"name": name,
                                                            "labels": {"kubernetes.io/metadata.name": name}}})
        for sc in STORAGE_CLASSES:
            if self.store.find(STORAGECLASSES, None, sc["metadata"]["name"]) is None:
                self.store.create(STORAGECLASSES, sc)


def start_proxy_process(kubeconfig: str, work_dir: str):
    """``python -m kubesim.proxy_process`` against the cluster; returns the Popen once it forwards."""
    import subprocess
    import sys

    log_path = os.path.join(work_dir, "proxy.log")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "kubesim.proxy_process", "--kubeconfig", kubeconfig],
                                   stdout=subprocess.PIPE, stderr=log_file,
                                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = process.stdout.readline()
    if line.strip() != b"ready":
        process.kill()
        with open(log_path, errors="replace") as f:
            raise RuntimeError(f"the proxy process did not start: {line!r}; {f.read()[-2000:]}")
    return process
