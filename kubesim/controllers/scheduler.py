"""default-scheduler: binds pending pods to the least allocated feasible node, and explains failures with
the upstream FitError wording (filter plugins in upstream order, then the preemption verdict)."""
from __future__ import annotations

import json
import threading

from .. import errors, labels
from ..resources import NODES, PODS, PVCS, PVS, STORAGECLASSES
from ..store import DELETED, Event
from .base import Context, Controller, obj_key
from .pods import is_finished, set_condition
from .quantity import parse_quantity, pod_requests

COMPONENT = "default-scheduler"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
# Scoring treats pods without requests as asking this much, like upstream's non-zero defaults.
DEFAULT_CPU, DEFAULT_MEMORY = 0.1, 200 * 2 ** 20

UNSCHEDULABLE = "node(s) were unschedulable"
AFFINITY = "node(s) didn't match Pod's node affinity/selector"
VOLUME_AFFINITY = "node(s) had volume node affinity conflict"
UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"
# Failures that evicting other pods cannot cure (UnschedulableAndUnresolvable upstream).
UNRESOLVABLE_PREFIXES = (UNSCHEDULABLE, AFFINITY, VOLUME_AFFINITY, "node(s) had untolerated taint")


class Scheduler(Controller):
    name = "scheduler"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._parked: set[tuple[str, str]] = set()   # pods waiting for a node, pod or volume change
        self._usage: dict[str, tuple[float, float, int, float, float]] = {}
        self._usage_lock = threading.Lock()
        self._allocatable_cache: dict[tuple[str, str], tuple[float, float, float]] = {}
        self._requests: dict[str, dict] = {}
        self._nodes_version = 0       # bumped by every node change a placement filter could see
        self._static_results: dict[str, tuple[int, list]] = {}

    def watches(self):
        return {PODS.key: self._pod_event, NODES.key: self._node_event,
                PVCS.key: self._retry_all, PVS.key: self._retry_all}

    def initial_keys(self):
        return [("pod", *obj_key(p)) for p in self.cache.list(PODS) if not p["spec"].get("nodeName")]

    # ---- events (under the store lock) ---------------------------------------------------------------
    def _pod_event(self, event: Event):
        pod = event.object
        old = event.old
        counted_before = old is not None and old["spec"].get("nodeName") and not is_finished(old)
        counted_now = event.type != DELETED and pod["spec"].get("nodeName") and not is_finished(pod)
        if (counted_before, old and old["spec"].get("nodeName")) != (counted_now, pod["spec"].get("nodeName")) \
                or event.type == DELETED:
            for obj in (pod, old):   # the node's requested resources changed
                if obj is not None and obj["spec"].get("nodeName"):
                    with self._usage_lock:
                        self._usage.pop(obj["spec"]["nodeName"], None)
        if event.type == DELETED:
            self._requests.pop(pod["metadata"]["uid"], None)
        if event.type == DELETED or (is_finished(pod) and not (event.old and is_finished(event.old))):
            if pod["spec"].get("nodeName"):
                return self._retry_all(event)   # capacity was freed
            return ()
        if not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
            return [("pod", *obj_key(pod))]
        return ()

    def _node_event(self, event: Event):
        with self._usage_lock:
            self._usage.pop(event.object["metadata"]["name"], None)
        if event.type == "MODIFIED" and scheduling_view(event.old) == scheduling_view(event.object):
            return ()   # a heartbeat: nothing a filter looks at has changed
        self._nodes_version += 1
        return self._retry_all(event)

    def _retry_all(self, event: Event):
        return [("pod", *key) for key in tuple(self._parked)]   # tuple(): the worker changes the set

    # ---- scheduling ----------------------------------------------------------------------------------
    def sync(self, key) -> None:
        _, ns, name = key
        pod = self.cache.get(PODS, ns, name)
        if pod is None or pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp") \
                or pod["spec"].get("schedulerName", "default-scheduler") != "default-scheduler":
            self._parked.discard((ns, name))
            return
        placements = self._static_filter(pod)
        num_nodes = len(placements)
        claims, pre_filter_failure = self._claims(pod)
        if pre_filter_failure:
            return self._unschedulable_pod(pod, f"0/{num_nodes} nodes are available: {pre_filter_failure}. "
                                                f"preemption: 0/{num_nodes} nodes are available: {num_nodes} "
                                                f"Preemption is not helpful for scheduling.")
        if not placements:
            return self._unschedulable_pod(pod, "no nodes available to schedule pods")
        requests = pod_requests(pod)
        candidates = [node for node, static_reason in placements if not static_reason]
        feasible = [node for node in candidates if not self._dynamic_filter(requests, node, claims)]
        if not feasible:
            failures = {node["metadata"]["name"]: [static_reason] if static_reason else
                        self._dynamic_filter(requests, node, claims) for node, static_reason in placements}
            return self._unschedulable_pod(pod, _fit_error(num_nodes, failures))
        preferred = {n["metadata"]["name"]: preferred_affinity_score(pod, n) for n in feasible}
        top = max(preferred.values()) or 1
        # kube-scheduler's default weights: NodeAffinity 2, NodeResourcesFit 1, each score normalized to 0..100
        best = min(feasible, key=lambda n: (-(2 * 100 * preferred[n["metadata"]["name"]] / top
                                              + 100 * self._score(requests, n)), n["metadata"]["name"]))  # ties: first name
        waiting = self._select_node_for_claims(claims, best["metadata"]["name"])
        if waiting:
            self._parked.add((ns, name))   # the PV binder provisions on the selected node; its events bring us back
            return
        self._bind(pod, best["metadata"]["name"])

    def _claims(self, pod: dict) -> tuple[list[tuple[dict, dict | None, dict | None]], str | None]:
        """(pvc, pv, storage class) per volume claim, or the PreFilter failure upstream would report."""
        claims = []
        for volume in pod["spec"].get("volumes") or ():
            claim_name = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim_name:
                continue
            pvc = self.cache.get(PVCS, pod["metadata"]["namespace"], claim_name)
            if pvc is None:
                return [], f'persistentvolumeclaim "{claim_name}" not found'
            if pvc["metadata"].get("deletionTimestamp"):
                return [], f'persistentvolumeclaim "{claim_name}" is being deleted'
            pv_name = pvc["spec"].get("volumeName")
            pv = self.cache.get(PVS, None, pv_name) if pv_name else None
            sc = self.cache.get(STORAGECLASSES, None, pvc["spec"].get("storageClassName") or "")
            if pv is None and (sc is None or sc.get("volumeBindingMode") != "WaitForFirstConsumer"):
                return [], UNBOUND_IMMEDIATE
            claims.append((pvc, pv, sc))
        return claims, None

    def _static_filter(self, pod: dict) -> list[tuple[dict, str | None]]:
        """(node, reason) from the filters that look only at nodes and the pod's placement rules, shared by
        every pod with the same rules until a node changes (a Deployment's pods all ask the same)."""
        spec = pod["spec"]
        rules = json.dumps([spec.get("nodeSelector"), (spec.get("affinity") or {}).get("nodeAffinity"),
                            spec.get("tolerations")], sort_keys=True)
        version = self._nodes_version
        cached = self._static_results.get(rules)
        if cached is not None and cached[0] == version:
            return cached[1]
        results = [(node, placement_reason(pod, node)) for node in self.cache.list(NODES)]
        if len(self._static_results) > 1000 or any(v != version for v, _ in self._static_results.values()):
            self._static_results = {}
        self._static_results[rules] = (version, results)
        return results

    def _dynamic_filter(self, requests: dict, node: dict, claims) -> list[str]:
        """NodeResourcesFit and VolumeBinding: they depend on the pods and volumes of the moment."""
        reasons = self._resource_fit(requests, node)
        if reasons:
            return reasons
        for pvc, pv, sc in claims:
            if pv is not None and not _node_selector_matches(
                    ((pv["spec"].get("nodeAffinity") or {}).get("required")), node):
                return [VOLUME_AFFINITY]
            selected = pvc["metadata"].get("annotations", {}).get(SELECTED_NODE)
            if pv is None and selected and selected != node["metadata"]["name"]:
                return [VOLUME_AFFINITY]
        return []

    def _resource_fit(self, requests: dict, node: dict) -> list[str]:
        cpu, memory, count, _, _ = self._node_usage(node["metadata"]["name"])
        cap_cpu, cap_memory, cap_pods = self._allocatable(node)
        reasons = []
        if count + 1 > cap_pods:
            reasons.append("Too many pods")
        if requests.get("cpu", 0) and cpu + requests["cpu"] > cap_cpu + 1e-9:
            reasons.append("Insufficient cpu")
        if requests.get("memory", 0) and memory + requests["memory"] > cap_memory:
            reasons.append("Insufficient memory")
        return reasons

    def _allocatable(self, node: dict) -> tuple[float, float, float]:
        """(cpu, memory, pods) allocatable, parsed once per node version."""
        key = (node["metadata"]["name"], node["metadata"].get("resourceVersion"))
        parsed = self._allocatable_cache.get(key)
        if parsed is None:
            allocatable = node.get("status", {}).get("allocatable") or {}
            parsed = (parse_quantity(allocatable.get("cpu", 0)), parse_quantity(allocatable.get("memory", 0)),
                      parse_quantity(allocatable.get("pods", 110)))
            self._allocatable_cache = {k: v for k, v in self._allocatable_cache.items() if k[0] != key[0]}
            self._allocatable_cache[key] = parsed
        return parsed

    def _node_usage(self, node: str) -> tuple[float, float, int, float, float]:
        """Requests of the node's non-terminated pods: (cpu, memory, count, scoring cpu, scoring memory)."""
        with self._usage_lock:
            cached = self._usage.get(node)
        if cached is not None:
            return cached
        cpu = memory = score_cpu = score_memory = 0.0
        count = 0
        for p in self.cache.pods_on_node(node):
            if is_finished(p):
                continue
            requests = self._requests_of(p)
            cpu += requests.get("cpu", 0.0)
            memory += requests.get("memory", 0.0)
            score_cpu += requests.get("cpu") or DEFAULT_CPU
            score_memory += requests.get("memory") or DEFAULT_MEMORY
            count += 1
        usage = (cpu, memory, count, score_cpu, score_memory)
        with self._usage_lock:
            self._usage[node] = usage
        return usage

    def _requests_of(self, pod: dict) -> dict:
        """Pod requests, remembered by uid (containers' resources do not change)."""
        uid = pod["metadata"]["uid"]
        requests = self._requests.get(uid)
        if requests is None:
            requests = self._requests[uid] = pod_requests(pod)
        return requests

    def _score(self, requests: dict, node: dict) -> float:
        """NodeResourcesFit LeastAllocated: the mean free fraction of cpu and memory after placing the pod."""
        _, _, _, cpu, memory = self._node_usage(node["metadata"]["name"])
        cap_cpu, cap_memory, _ = self._allocatable(node)
        cap_cpu, cap_memory = cap_cpu or 1, cap_memory or 1
        free_cpu = max(0.0, cap_cpu - cpu - (requests.get("cpu") or DEFAULT_CPU)) / cap_cpu
        free_memory = max(0.0, cap_memory - memory - (requests.get("memory") or DEFAULT_MEMORY)) / cap_memory
        return round((free_cpu + free_memory) / 2, 9)

    def _select_node_for_claims(self, claims, node: str) -> bool:
        """WaitForFirstConsumer: annotate unbound claims with the chosen node; True while any is unbound."""
        waiting = False
        for pvc, pv, _ in claims:
            if pv is not None:
                continue
            waiting = True
            if pvc["metadata"].get("annotations", {}).get(SELECTED_NODE) != node:
                self.store.mutate(PVCS, pvc["metadata"]["namespace"], pvc["metadata"]["name"],
                                  lambda c: c["metadata"].setdefault("annotations", {}).update({SELECTED_NODE: node}))
        return waiting

    def _bind(self, pod: dict, node: str) -> None:
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]

        def bind(p: dict) -> None:
            if p["metadata"]["uid"] != uid or p["spec"].get("nodeName"):
                raise errors.conflict("pods", name, "pod was bound or replaced meanwhile")
            p["spec"]["nodeName"] = node
        self.store.mutate(PODS, ns, name, bind, echo=False, touches=("spec",))   # the kubelet's first status write sets PodScheduled=True
        self._parked.discard((ns, name))
        self.events.normal(pod, "Scheduled", f"Successfully assigned {ns}/{name} to {node}", COMPONENT)

    def _unschedulable_pod(self, pod: dict, message: str) -> None:
        ns, name = obj_key(pod)
        self._parked.add((ns, name))

        def mark(p: dict) -> None:
            status = p.setdefault("status", {})
            status.setdefault("phase", "Pending")
            set_condition(status, "PodScheduled", "False", "Unschedulable", message, probe_time=True)
        self.store.mutate(PODS, ns, name, mark, subresource="status", echo=False)
        self.events.warning(pod, "FailedScheduling", message, COMPONENT)


def placement_reason(pod: dict, node: dict) -> str | None:
    """NodeUnschedulable, TaintToleration and NodeAffinity in upstream order: the first failure."""
    tolerations = pod["spec"].get("tolerations") or []
    if node.get("spec", {}).get("unschedulable") and not tolerates(
            tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}):
        return UNSCHEDULABLE
    for taint in node.get("spec", {}).get("taints") or ():
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    if not node_affinity_matches(pod, node):
        return AFFINITY
    return None


def _fit_error(num_nodes: int, failures: dict[str, list[str]]) -> str:
    """FitError.Error(): sorted "<count> <reason>" histogram, then the preemption PostFilter's verdict."""
    histogram: dict[str, int] = {}
    preemption: dict[str, int] = {}
    for reasons in failures.values():
        for reason in reasons:
            histogram[reason] = histogram.get(reason, 0) + 1
        helpless = any(r.startswith(UNRESOLVABLE_PREFIXES) for r in reasons)
        verdict = "Preemption is not helpful for scheduling" if helpless else "No preemption victims found for incoming pod"
        preemption[verdict] = preemption.get(verdict, 0) + 1
    reasons = ", ".join(sorted(f"{n} {r}" for r, n in histogram.items()))
    verdicts = ", ".join(sorted(f"{n} {r}" for r, n in preemption.items()))
    return (f"0/{num_nodes} nodes are available: {reasons}. "
            f"preemption: 0/{num_nodes} nodes are available: {verdicts}.")


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator", "Equal") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _node_selector_matches(node_selector: dict | None, node: dict) -> bool:
    """A NodeSelector: terms are ORed, requirements within a term ANDed; no selector matches every node."""
    if not node_selector:
        return True
    terms = node_selector.get("nodeSelectorTerms") or []
    node_labels = node["metadata"].get("labels") or {}
    fields = {"metadata.name": node["metadata"]["name"]}
    for term in terms:
        exprs, field_exprs = term.get("matchExpressions") or [], term.get("matchFields") or []
        if not exprs and not field_exprs:
            continue   # an empty term matches nothing
        if labels.matches(labels.from_expressions(exprs), node_labels) and \
                labels.matches(labels.from_expressions(field_exprs), fields):
            return True
    return False


def node_affinity_matches(pod: dict, node: dict) -> bool:
    node_labels = node["metadata"].get("labels") or {}
    if not all(node_labels.get(k) == v for k, v in (pod["spec"].get("nodeSelector") or {}).items()):
        return False
    required = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    return _node_selector_matches(required, node)


def preferred_affinity_score(pod: dict, node: dict) -> int:
    """NodeAffinity's raw score: the weights of the pod's preferredDuringScheduling terms the node matches."""
    preferred = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                 .get("preferredDuringSchedulingIgnoredDuringExecution")) or []
    return sum(term.get("weight", 0) for term in preferred
               if _node_selector_matches({"nodeSelectorTerms": [term.get("preference") or {}]}, node))


def scheduling_view(node: dict) -> tuple:
    status = node.get("status") or {}
    return (node["metadata"].get("labels"), node.get("spec"), status.get("allocatable"),
            [(c.get("type"), c.get("status")) for c in status.get("conditions") or ()])
