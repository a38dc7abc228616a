"""kubesim's kubelets as the nodes of a real control plane (issue 14, phase 2).

Each node gets a client certificate of its own (CN system:node:<node>, O system:nodes), a RemoteStore with
that identity and the informers a real kubelet has (its pods by `spec.nodeName`, its Node by name, the
Services for the containers' service-link env), a Cache of that view, an EventRecorder and a ProcessRuntime.
The kubelet state machine is kubesim's own (controllers/kubelet.py); scheduling, workload controllers, node
lifecycle and garbage collection are the real kube-scheduler's and kube-controller-manager's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .cluster import STORAGE_CLASSES
from .config import ClusterConfig
from .controllers.base import Context, EventRoutes, Timers, WorkerPool
from .controllers.cache import Cache
from .controllers.events import EventRecorder
from .controllers.kubelet import Kubelet, Kubelets
from .controllers.manager import WORKER_THREADS
from .controllers.provisioner import Provisioner
from .dataplane.network import LoopbackNetwork
from .dataplane.proxy import ServiceProxy
from .dataplane.runtime import ProcessRuntime
from .kubeletapi import KubeletApi
from .remote import Informed, RemoteStore
from .resources import ENDPOINTS, ENDPOINTSLICES, NODES, PODS, PVCS, PVS, SERVICES, STORAGECLASSES
from .runtime import SimulatedRuntime

# What a kubelet's cache holds: the API objects it watches.
KUBELET_VIEW = (PODS, NODES, SERVICES)
# What kube-proxy watches, cluster-wide.
PROXY_VIEW = (SERVICES, ENDPOINTSLICES, ENDPOINTS, NODES)
# What the provisioner watches, cluster-wide.
PROVISIONER_VIEW = (PVCS, PVS, STORAGECLASSES)
PROVISIONER_USER = "kubesim-provisioner"   # bound to the bootstrap ClusterRole system:persistent-volume-provisioner


@dataclass
class Node:
    name: str
    store: RemoteStore
    runtime: object
    kubelet: Kubelet
    kubeconfig: str   # its identity (CN system:node:<name>)


class RealNodes:
    """One kubelet (+ runtime) per node of `config.nodes` against `control_plane`; start() / stop()."""

    def __init__(self, control_plane, config: ClusterConfig, faults=None) -> None:
        self.control_plane = control_plane
        self.config = config
        self.faults = faults
        self.network = LoopbackNetwork()
        self.timers = Timers()
        self.workers = WorkerPool(WORKER_THREADS, "kubesim-kubelet-worker")
        # The poller and Kubelets' routing need only the config: each kubelet brings its own Context.
        self.kubelets = Kubelets(Context(None, config, None, faults, self.timers, self.workers, None, None))
        self.nodes: dict[str, Node] = {}
        self.proxy_store: RemoteStore | None = None
        self.proxy: ServiceProxy | None = None
        self.provisioner_store: RemoteStore | None = None
        self.apis: list[KubeletApi] = []
        self.provisioner: Provisioner | None = None

    def start(self) -> "RealNodes":
        self.timers.start()
        self.workers.start()
        for name in self.config.nodes:
            self.add_node(name)
        self.kubelets.start_poller()
        self.start_provisioner()
        if self.config.run_processes:
            self.start_proxy()
        return self

    def start_provisioner(self) -> None:
        """kubesim's StorageClasses' provisioner with an identity of its own (the binding is Cluster's)."""
        cp = self.control_plane
        kubeconfig = cp.kubeconfig_for("provisioner", cp.pki.issue("provisioner", PROVISIONER_USER, client=True),
                                       PROVISIONER_USER)
        store = self.provisioner_store = RemoteStore.from_kubeconfig(
            kubeconfig, [Informed(rt) for rt in PROVISIONER_VIEW], user_agent="kubesim-provisioner").start()
        ctx = Context(store, self.config, None, self.faults, self.timers, self.workers,
                      Cache(store, PROVISIONER_VIEW), EventRecorder(store))
        self.provisioner = Provisioner(ctx, {sc["provisioner"] for sc in STORAGE_CLASSES})
        store.add_listener(EventRoutes([self.provisioner]).dispatch)
        self.provisioner.start()

    def start_proxy(self) -> None:
        """The service proxy (kube-proxy's part): one for the machine, as every node is this machine."""
        cp = self.control_plane
        kubeconfig = cp.kubeconfig_for("kube-proxy", cp.proxy_credentials(), "system:kube-proxy")
        self.proxy_store = RemoteStore.from_kubeconfig(kubeconfig, [Informed(rt) for rt in PROXY_VIEW],
                                                       user_agent="kubesim-proxy").start()
        self.proxy = ServiceProxy(self.proxy_store, self.network)
        self.proxy.start()

    def add_node(self, name: str) -> Kubelet:
        cp = self.control_plane
        kubeconfig = cp.kubeconfig_for(f"node-{name}", cp.node_credentials(name), f"system:node:{name}")
        if name not in self.config.nodes:
            self.config.nodes = [*self.config.nodes, name]
        return self._start_kubelet(name, kubeconfig)

    def restart_kubelet(self, name: str, down_seconds: float = 0.0) -> Kubelet:
        """The node's kubelet process restarted (a crash, an upgrade, `systemctl restart kubelet`): its threads,
        API connections, kubelet API and everything it remembers end; after ``down_seconds`` a new one starts
        with the same identity, addresses and kubelet API port. As on a real node, the pods' containers are not
        the kubelet's but the runtime's (containerd's there): they run on, and the new kubelet re-registers,
        finds them (Kubelet._adopt) and reports their status again; pods deleted meanwhile are stopped. The Node
        stays Ready unless the kubelet is down longer than the node-monitor grace period."""
        old = self.nodes.pop(name)
        old.kubelet.stop()
        api = next((a for a in self.apis if a.node == name), None)
        if api is not None:
            api.stop()
            self.apis.remove(api)
        old.store.close()
        time.sleep(down_seconds)
        return self._start_kubelet(name, old.kubeconfig, old)

    def _start_kubelet(self, name: str, kubeconfig: str, restarted: Node | None = None) -> Kubelet:
        """A kubelet for node ``name``; ``restarted``: the node's previous one, whose runtime, number and kubelet API
        port the new one takes over."""
        cp = self.control_plane
        store = RemoteStore.from_kubeconfig(kubeconfig, [
            Informed(PODS, field_selector=f"spec.nodeName={name}"),
            Informed(NODES, field_selector=f"metadata.name={name}"),
            Informed(SERVICES)], user_agent=f"kubesim-kubelet/{name}").start()
        cache = Cache(store, KUBELET_VIEW)
        if restarted is not None:
            runtime = restarted.runtime
            if hasattr(runtime, "serve"):
                runtime.serve(store)
            bound = {p["metadata"]["uid"] for p in cache.pods_on_node(name)}
            for uid in set(runtime.pod_uids()) - bound:   # deleted while no kubelet was there: housekeeping
                runtime.stop_pod(uid, 0)
        else:
            runtime = ProcessRuntime(store, self.config, self.faults, self.network) if self.config.run_processes \
                else SimulatedRuntime()
        ctx = Context(store, self.config, runtime, self.faults, self.timers, self.workers, cache,
                      EventRecorder(store))
        kubelet = self.kubelets.add(name, ctx, restarted.kubelet.index if restarted else None)
        if self.config.run_processes:
            api = KubeletApi(name, kubelet.internal_ip, runtime, lambda ns, pod: cache.get(PODS, ns, pod), cp.pki.issue(
                f"kubelet-{name}", f"system:node:{name}", ("system:nodes",), server=True, dns_names=(name,),
                ips=(kubelet.internal_ip,)), cp.ca_file, port=restarted.kubelet.api_port if restarted else 0).start()
            self.apis.append(api)
            # the API server then proxies kubectl's WebSocket exec straight here (see kubeletapi.py)
            kubelet.api_port, kubelet.declared_features = api.port, ("ExtendWebSocketsToKubelet",)
        store.add_listener(self.kubelets.on_event)   # after the cache's listener: the kubelet reads the cache
        self.nodes[name] = Node(name, store, runtime, kubelet, kubeconfig)
        kubelet.start()
        return kubelet

    def stop(self) -> None:
        """The proxy and the provisioner, the kubelets, then every pod process, then the informers."""
        if self.proxy is not None:
            self.proxy.stop()
        if self.provisioner is not None:
            self.provisioner.stop()
        for api in self.apis:
            api.stop()
        for store in (self.proxy_store, self.provisioner_store):
            if store is not None:
                store.close()
        for node in self.nodes.values():
            node.kubelet.stop()
        self.kubelets.stop_poller()
        self.workers.stop()
        stopping = [t for node in self.nodes.values() for t in node.kubelet.stop_all_pods()]
        for thread in stopping:
            thread.join(timeout=self.config.max_grace_seconds + 10)
        self.timers.stop()
        for node in self.nodes.values():
            close = getattr(node.runtime, "close", None)
            if close is not None:
                close()
            node.store.close()
