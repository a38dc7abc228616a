"""ControllerManager: builds the shared cache, timers and event recorder, runs every controller and one
kubelet per node, and routes store events to their queues."""
from __future__ import annotations

import threading

from ..config import ClusterConfig
from ..store import Event, Store
from .base import Context, Controller, EventRoutes, Timers, WorkerPool
from .cache import Cache
from .daemonset import DaemonSetController
from .deployment import DeploymentController
from .disruption import DisruptionController
from .endpoints import EndpointsController
from .endpointslice import EndpointSliceController
from .events import EventRecorder
from .garbagecollector import GarbageCollector
from .kubelet import Kubelet, Kubelets
from .namespace import NamespaceController
from .nodelifecycle import NodeLifecycleController
from .pvbinder import PersistentVolumeBinder
from .replicaset import ReplicaSetController
from .scheduler import Scheduler
from .serviceaccount import ServiceAccountController
from .statefulset import StatefulSetController

CONTROLLERS = (EndpointsController, EndpointSliceController, Scheduler, ReplicaSetController, DeploymentController,
               StatefulSetController, DaemonSetController, PersistentVolumeBinder, DisruptionController, GarbageCollector,
               NamespaceController, ServiceAccountController, NodeLifecycleController)

# Threads shared by all controllers and kubelets. One: no sync blocks (runtimes start and stop pods on
# threads of their own), and under the GIL more threads only add hand-offs (4 threads cost twice the CPU).
WORKER_THREADS = 1


class ControllerManager:
    def __init__(self, store: Store, config: ClusterConfig, runtime, faults=None) -> None:
        self.store = store
        self.config = config
        self.runtime = runtime
        self.timers = Timers()
        self.workers = WorkerPool(WORKER_THREADS)
        self.cache = Cache(store)
        self.ctx = Context(store, config, runtime, faults, self.timers, self.workers, self.cache, EventRecorder(store))
        self.kubelets = Kubelets(self.ctx)
        for node in config.nodes:
            self.kubelets.add(node)
        self.controllers: list[Controller] = [cls(self.ctx) for cls in CONTROLLERS]
        self._routes = EventRoutes(self.controllers)
        self._lock = threading.Lock()
        self._running = False
        store.add_listener(self._dispatch)

    def controller(self, cls: type) -> Controller:
        return next(c for c in self.controllers if isinstance(c, cls))

    def _dispatch(self, event: Event) -> None:
        """Store listener (under the store lock): only enqueue."""
        if not self._running:
            return
        self._routes.dispatch(event)
        self.kubelets.on_event(event)

    def start(self) -> "ControllerManager":
        with self._lock:
            self.timers.start()
            self.workers.start()
            self._running = True
            for kubelet in self.kubelets.by_node.values():
                kubelet.start()
            for controller in self.controllers:
                controller.start()
            self.kubelets.start_poller()
        return self

    def add_node(self, name: str) -> Kubelet:
        """Join a node (a new kubelet) while the cluster runs."""
        with self._lock:
            kubelet = self.kubelets.add(name)
            if name not in self.config.nodes:
                self.config.nodes = [*self.config.nodes, name]
            if self._running:
                kubelet.start()
            return kubelet

    def stop(self) -> None:
        """Stop every controller, then every pod through the runtime; returns once nothing runs."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            workers = list(self.controllers) + list(self.kubelets.by_node.values())
            for worker in workers:
                worker.stop()
            self.kubelets.stop_poller()
            self.workers.stop()   # returns once no sync runs any more
            stopping = [t for kubelet in self.kubelets.by_node.values() for t in kubelet.stop_all_pods()]
            for thread in stopping:
                thread.join(timeout=self.config.max_grace_seconds + 10)
            self.timers.stop()
