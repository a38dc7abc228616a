"""kubesim's kubelets as the nodes of a real control plane (issue 14, phase 2).

Each node gets a client certificate of its own (CN system:node:<node>, O system:nodes), a RemoteStore with
that identity and the informers a real kubelet has (its pods by `spec.nodeName`, its Node by name, the
Services for the containers' service-link env), a Cache of that view, an EventRecorder and a ProcessRuntime.
The kubelet state machine is kubesim's own (controllers/kubelet.py); scheduling, workload controllers, node
lifecycle and garbage collection are the real kube-scheduler's and kube-controller-manager's.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ClusterConfig
from .controllers.base import Context, Timers, WorkerPool
from .controllers.cache import Cache
from .controllers.events import EventRecorder
from .controllers.kubelet import Kubelet, Kubelets
from .controllers.manager import WORKER_THREADS
from .dataplane.network import LoopbackNetwork
from .dataplane.runtime import ProcessRuntime
from .remote import Informed, RemoteStore
from .resources import NODES, PODS, SERVICES
from .runtime import SimulatedRuntime

# What a kubelet's cache holds: the API objects it watches.
KUBELET_VIEW = (PODS, NODES, SERVICES)


@dataclass
class Node:
    name: str
    store: RemoteStore
    runtime: object
    kubelet: Kubelet


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

    def start(self) -> "RealNodes":
        self.timers.start()
        self.workers.start()
        for name in self.config.nodes:
            self.add_node(name)
        self.kubelets.start_poller()
        return self

    def add_node(self, name: str) -> Kubelet:
        cp = self.control_plane
        kubeconfig = cp.kubeconfig_for(f"node-{name}", cp.node_credentials(name), f"system:node:{name}")
        store = RemoteStore.from_kubeconfig(kubeconfig, [
            Informed(PODS, field_selector=f"spec.nodeName={name}"),
            Informed(NODES, field_selector=f"metadata.name={name}"),
            Informed(SERVICES)], user_agent=f"kubesim-kubelet/{name}").start()
        cache = Cache(store, KUBELET_VIEW)
        runtime = ProcessRuntime(store, self.config, self.faults, self.network) if self.config.run_processes \
            else SimulatedRuntime()
        ctx = Context(store, self.config, runtime, self.faults, self.timers, self.workers, cache,
                      EventRecorder(store))
        kubelet = self.kubelets.add(name, ctx)
        store.add_listener(self.kubelets.on_event)   # after the cache's listener: the kubelet reads the cache
        self.nodes[name] = Node(name, store, runtime, kubelet)
        if name not in self.config.nodes:
            self.config.nodes = [*self.config.nodes, name]
        kubelet.start()
        return kubelet

    def stop(self) -> None:
        """Kubelets first, then every pod process, then the informers."""
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
