"""node-lifecycle-controller with its taint-eviction part: marks nodes whose kubelet stopped renewing its
Lease Unknown, taints NotReady/unreachable/cordoned nodes, and evicts pods that do not tolerate a
NoExecute taint once their tolerationSeconds have passed."""
from __future__ import annotations

import time

from ..resources import LEASES, NODES, PODS
from ..store import DELETED, Event, now_rfc3339, parse_rfc3339
from .base import Context, Controller
from .kubelet import LEASE_NAMESPACE
from .pods import condition, is_terminating, set_condition
from .scheduler import tolerates

COMPONENT = "node-controller"
EVICTION_COMPONENT = "taint-eviction-controller"
NOT_READY, UNREACHABLE, UNSCHEDULABLE = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
                                         "node.kubernetes.io/unschedulable")
NODE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
# Ready condition status -> the taint key that says so (upstream doNoScheduleTaintingPass / NoExecute pass)
TAINT_FOR_READY = {"False": NOT_READY, "Unknown": UNREACHABLE}


class NodeLifecycleController(Controller):
    name = "nodelifecycle"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._renewed: dict[str, float] = {}
        self._monitoring_since = time.monotonic()

    def watches(self):
        return {NODES.key: lambda e: [] if e.type == DELETED else [e.object["metadata"]["name"]],
                LEASES.key: self._lease_renewed}

    def initial_keys(self):
        self.ctx.timers.call_later(self._period(), self._monitor)
        return [n["metadata"]["name"] for n in self.cache.list(NODES)]

    def _period(self) -> float:
        return max(0.1, min(1.0, self.config.node_monitor_grace_seconds / 4))

    def _monitor(self) -> None:
        """Periodic look at every node: the absence of lease renewals produces no event."""
        if self._stopped:
            return
        self.enqueue_all(n["metadata"]["name"] for n in self.cache.list(NODES))
        self.ctx.timers.call_later(self._period(), self._monitor)

    def _lease_renewed(self, event: Event):
        meta = event.object["metadata"]
        if meta.get("namespace") != LEASE_NAMESPACE or event.type == DELETED:
            return []
        self._renewed[meta["name"]] = time.monotonic()
        return []

    def sync(self, name) -> None:
        node = self.cache.get(NODES, None, name)
        if node is None:
            return
        last = self._renewed.get(name, self._monitoring_since)
        ready = condition(node, "Ready")
        if time.monotonic() - last > self.config.node_monitor_grace_seconds and \
                (ready is None or ready.get("status") != "Unknown"):
            self._mark_unknown(node)
            return   # the node update brings us back for the taints
        self._reconcile_taints(node)
        self._evict_intolerant_pods(node)

    def _mark_unknown(self, node: dict) -> None:
        stamp = now_rfc3339()

        def unknown(n: dict) -> None:
            status = n.setdefault("status", {})
            for type_ in NODE_CONDITIONS:
                set_condition(status, type_, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.",
                              stamp)
        name = node["metadata"]["name"]
        self.store.mutate(NODES, None, name, unknown, subresource="status")
        self.events.normal(node, "NodeNotReady", f"Node {name} status is now: NodeNotReady", COMPONENT)
        for pod in self.cache.pods_on_node(name):
            if condition(pod, "Ready") and condition(pod, "Ready").get("status") == "True":
                self.store.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                  lambda p: set_condition(p["status"], "Ready", "False", stamp=stamp, probe_time=True),
                                  subresource="status")
                self.events.warning(pod, "NodeNotReady", "Node is not ready", COMPONENT)

    def _reconcile_taints(self, node: dict) -> None:
        ready = (condition(node, "Ready") or {}).get("status", "Unknown")
        wanted: list[tuple[str, str]] = []
        if ready in TAINT_FOR_READY:
            wanted += [(TAINT_FOR_READY[ready], "NoSchedule"), (TAINT_FOR_READY[ready], "NoExecute")]
        if node.get("spec", {}).get("unschedulable"):
            wanted.append((UNSCHEDULABLE, "NoSchedule"))
        managed = (NOT_READY, UNREACHABLE, UNSCHEDULABLE)
        current = node.get("spec", {}).get("taints") or []
        keep = [t for t in current if t["key"] not in managed or (t["key"], t["effect"]) in wanted]
        have = {(t["key"], t["effect"]) for t in keep}
        added = [dict({"key": k, "effect": e}, **({"timeAdded": now_rfc3339()} if e == "NoExecute" else {}))
                 for k, e in wanted if (k, e) not in have]
        if added or len(keep) != len(current):
            taints = keep + added
            self.store.mutate(NODES, None, node["metadata"]["name"],
                              lambda n: n["spec"].update(taints=taints) if taints else n["spec"].pop("taints", None))

    def _evict_intolerant_pods(self, node: dict) -> None:
        """Taint manager: NoExecute taints evict pods at once, or after the toleration's seconds."""
        taints = [t for t in node.get("spec", {}).get("taints") or () if t.get("effect") == "NoExecute"]
        if not taints:
            return
        now = time.time()
        wake = None
        for pod in self.cache.pods_on_node(node["metadata"]["name"]):
            if is_terminating(pod):
                continue
            deadline = self._eviction_deadline(pod, taints)
            if deadline is None:
                continue
            if deadline <= now:
                self.events.normal(pod, "TaintManagerEviction",
                                   f"Marking for deletion Pod {pod['metadata']['namespace']}/{pod['metadata']['name']}",
                                   EVICTION_COMPONENT)
                self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            else:
                wake = deadline if wake is None else min(wake, deadline)
        if wake is not None:
            self.requeue_after(node["metadata"]["name"], wake - now + 0.05)

    def _eviction_deadline(self, pod: dict, taints: list[dict]) -> float | None:
        """Epoch seconds when the pod must go, None when it tolerates every NoExecute taint forever."""
        tolerations = list(pod["spec"].get("tolerations") or [])
        # DefaultTolerationSeconds admission: pods tolerate not-ready/unreachable for a while unless they say otherwise
        for key in (NOT_READY, UNREACHABLE):
            if not any(t.get("key") == key and t.get("effect") in (None, "", "NoExecute") for t in tolerations):
                tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": self.config.default_toleration_seconds})
        deadline = None
        for taint in taints:
            matching = [t for t in tolerations if tolerates([t], taint)]
            if not matching:
                return 0.0
            seconds = [t["tolerationSeconds"] for t in matching if t.get("tolerationSeconds") is not None]
            if len(seconds) < len(matching):
                continue   # one toleration without a limit: tolerated forever
            added = parse_rfc3339(taint["timeAdded"]) if taint.get("timeAdded") else time.time()
            candidate = added + max(0, min(seconds))
            deadline = candidate if deadline is None else min(deadline, candidate)
        return deadline
