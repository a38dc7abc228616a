"""daemonset-controller: one pod on every node its placement rules and taints admit, pinned there by a
required node affinity on metadata.name for the scheduler to honour (as upstream since 1.12); RollingUpdate
(maxUnavailable, default 1) or OnDelete; the status `kubectl rollout status ds/…` reads."""
from __future__ import annotations

from ..resources import DAEMONSETS, NODES, PODS
from ..store import Event
from .base import Controller, obj_key, same_keys_unless_status
from .deployment import pod_template_hash, resolve_int_or_percent
from .owners import controller_ref, owner_keys
from .pods import is_available, is_finished, is_ready, is_terminating, pod_from_template, seconds_until_available
from .scheduler import placement_reason, scheduling_view

COMPONENT = "daemonset-controller"
HASH_LABEL = "controller-revision-hash"
# Upstream adds these to every DaemonSet pod: it runs on cordoned and pressured nodes and outlives NotReady.
DAEMON_TOLERATIONS = tuple({"key": f"node.kubernetes.io/{key}", "operator": "Exists", "effect": effect}
                           for key, effect in (("not-ready", "NoExecute"), ("unreachable", "NoExecute"),
                                               ("disk-pressure", "NoSchedule"), ("memory-pressure", "NoSchedule"),
                                               ("pid-pressure", "NoSchedule"), ("unschedulable", "NoSchedule")))


class DaemonSetController(Controller):
    name = "daemonset"

    def watches(self):
        return {DAEMONSETS.key: same_keys_unless_status, PODS.key: self._pod_owner, NODES.key: self._node_changed}

    def initial_keys(self):
        return [obj_key(ds) for ds in self.cache.list(DAEMONSETS)]

    @staticmethod
    def _pod_owner(event: Event):
        return owner_keys(event.object, "DaemonSet") + (owner_keys(event.old, "DaemonSet") if event.old else [])

    def _node_changed(self, event: Event):
        if event.type == "MODIFIED" and scheduling_view(event.old) == scheduling_view(event.object):
            return []   # a heartbeat
        return [obj_key(ds) for ds in self.cache.list(DAEMONSETS)]

    def sync(self, key) -> None:
        ds = self.cache.get(DAEMONSETS, *key)
        if ds is None or ds["metadata"].get("deletionTimestamp"):
            return
        template_hash = pod_template_hash(ds["spec"]["template"])
        nodes, pod_view = self.cache.list(NODES), self._pod_spec_view(ds)
        # upstream nodeShouldRunDaemonPod: placement rules and taints, with the daemon tolerations (cordons pass)
        eligible = {n["metadata"]["name"] for n in nodes if placement_reason(pod_view, n) is None}
        staying = {n["metadata"]["name"] for n in nodes if self._should_continue(pod_view, n)}
        by_node: dict[str, list[dict]] = {}
        for pod in self.cache.controlled_by(PODS, ds["metadata"]["uid"]):
            by_node.setdefault(target_node(pod) or "", []).append(pod)
        for node in sorted(eligible - set(by_node)):
            self._create(ds, node, template_hash, pod_view["spec"]["tolerations"])
        for node, pods in by_node.items():
            doomed = [p for p in pods if is_finished(p)]   # a failed daemon pod is replaced, like upstream
            if node not in staying:
                doomed = pods   # the node no longer admits it (a NoSchedule taint alone lets it stay)
            else:
                running = sorted((p for p in pods if p not in doomed and not is_terminating(p)),
                                 key=lambda p: p["metadata"]["creationTimestamp"])
                doomed += running[1:]   # one pod a node: the oldest stays
            for pod in doomed:
                self._delete(ds, pod)
        if (ds["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            self._roll(ds, eligible, by_node, template_hash)
        self._update_status(ds, eligible, template_hash)

    @staticmethod
    def _should_continue(pod_view: dict, node: dict) -> bool:
        """A pod already there stays unless the rules exclude the node or a NoExecute taint is not tolerated."""
        no_execute = [t for t in (node.get("spec") or {}).get("taints") or () if t.get("effect") == "NoExecute"]
        return placement_reason(pod_view, dict(node, spec=dict(node.get("spec") or {}, taints=no_execute))) is None

    @staticmethod
    def _pod_spec_view(ds: dict) -> dict:
        """The template as the placement rules see a daemon pod: with the tolerations upstream adds."""
        spec = ds["spec"]["template"].get("spec") or {}
        return {"spec": dict(spec, tolerations=[*(spec.get("tolerations") or ()), *DAEMON_TOLERATIONS])}

    def _create(self, ds: dict, node: str, template_hash: str, tolerations: list[dict]) -> None:
        ns = ds["metadata"]["namespace"]
        pod = pod_from_template(ds["spec"]["template"], ns, controller_ref(ds, DAEMONSETS),
                                generate_name=f"{ds['metadata']['name']}-", extra_labels={HASH_LABEL: template_hash})
        spec = pod["spec"]
        spec["tolerations"] = list(tolerations)
        node_affinity = dict((spec.get("affinity") or {}).get("nodeAffinity") or {})
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}
        spec["affinity"] = dict(spec.get("affinity") or {}, nodeAffinity=node_affinity)
        self.store.create(PODS, pod, echo=False, adopt=True)
        self.events.normal(ds, "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", COMPONENT)

    def _delete(self, ds: dict, pod: dict) -> None:
        if is_terminating(pod):
            return
        self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], echo=False)
        self.events.normal(ds, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", COMPONENT)

    def _roll(self, ds: dict, eligible: set[str], by_node: dict[str, list[dict]], template_hash: str) -> None:
        """Replace old-template pods node by node: unavailable ones at once, available ones while fewer than
        maxUnavailable nodes lack an available daemon pod (the next sync creates the new pod)."""
        min_ready = int(ds["spec"].get("minReadySeconds", 0))
        rolling = (ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}
        budget = max(1, resolve_int_or_percent(rolling.get("maxUnavailable", 1), len(eligible), True))
        old, unavailable = [], 0
        for node in sorted(eligible):
            live = [p for p in by_node.get(node, []) if not is_terminating(p) and not is_finished(p)]
            if not any(is_available(p, min_ready) for p in live):
                unavailable += 1
            old += [p for p in live if p["metadata"]["labels"].get(HASH_LABEL) != template_hash]
        for pod in old:
            if not is_available(pod, min_ready):
                self._delete(ds, pod)
            elif unavailable < budget:
                self._delete(ds, pod)
                unavailable += 1

    def _update_status(self, ds: dict, eligible: set[str], template_hash: str) -> None:
        min_ready = int(ds["spec"].get("minReadySeconds", 0))
        pods = [p for p in self.cache.controlled_by(PODS, ds["metadata"]["uid"])
                if not is_terminating(p) and not is_finished(p)]
        placed = [p for p in pods if target_node(p) in eligible]
        available = sum(1 for p in placed if is_available(p, min_ready))
        status = {
            "desiredNumberScheduled": len(eligible),
            "currentNumberScheduled": len({target_node(p) for p in placed}),
            "numberMisscheduled": sum(1 for p in pods if target_node(p) not in eligible),
            "numberReady": sum(1 for p in placed if is_ready(p)),
            "numberAvailable": available,
            "numberUnavailable": max(0, len(eligible) - available),
            "updatedNumberScheduled": sum(1 for p in placed if p["metadata"]["labels"].get(HASH_LABEL) == template_hash),
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
        status = {k: v for k, v in status.items() if v or k in ("desiredNumberScheduled", "currentNumberScheduled",
                                                                 "numberMisscheduled", "numberReady")}
        if status != ds.get("status"):
            self.store.mutate(DAEMONSETS, *obj_key(ds), lambda d: d.update(status=status), subresource="status",
                              echo=False, touches=())
        waits = [w for w in (seconds_until_available(p, min_ready) for p in placed) if w is not None]
        if waits:
            self.requeue_after(obj_key(ds), min(waits))


def target_node(pod: dict) -> str | None:
    """The node a daemon pod runs on, or is pinned to before the scheduler binds it."""
    if pod["spec"].get("nodeName"):
        return pod["spec"]["nodeName"]
    required = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or ():
        for field in term.get("matchFields") or ():
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and field.get("values"):
                return field["values"][0]
    return None
