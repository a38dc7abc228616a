"""disruption-controller (PodDisruptionBudget status) and the pods/eviction logic the API server calls,
so `kubectl drain` is refused with 429 while a budget would be broken, as upstream."""
from __future__ import annotations

import math
import time

from .. import errors, labels
from ..resources import DEPLOYMENTS, PDBS, PODS, REPLICASETS, STATEFULSETS
from ..store import Event, Store, now_rfc3339, parse_rfc3339
from .base import Controller, obj_key, same_keys
from .owners import controller_of
from .pods import is_ready, is_terminating

DISRUPTED_POD_TIMEOUT = 120.0   # seconds an eviction counts against the budget before the pod must be gone
MAX_DISRUPTED_PODS = 2000
VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."


def pdb_requirements(pdb: dict) -> list | None:
    selector = pdb["spec"].get("selector")
    return None if selector is None else labels.from_label_selector(selector)


class DisruptionController(Controller):
    name = "disruption"

    def watches(self):
        return {PDBS.key: same_keys, PODS.key: self._pdbs_of_pod}

    def initial_keys(self):
        return [obj_key(p) for p in self.cache.list(PDBS)]

    def _pdbs_of_pod(self, event: Event):
        ns = event.object["metadata"]["namespace"]
        candidates = [event.object["metadata"].get("labels")]
        if event.old is not None:
            candidates.append(event.old["metadata"].get("labels"))
        keys = []
        for pdb in self.cache.list(PDBS, ns):
            reqs = pdb_requirements(pdb)
            if reqs is not None and any(labels.matches(reqs, lbls) for lbls in candidates):
                keys.append(obj_key(pdb))
        return keys

    def sync(self, key) -> None:
        pdb = self.cache.get(PDBS, *key)
        if pdb is None:
            return
        reqs = pdb_requirements(pdb)
        pods = self.cache.select(PODS, key[0], reqs) if reqs is not None else []
        now = time.time()
        disrupted = {name: stamp for name, stamp in ((pdb.get("status") or {}).get("disruptedPods") or {}).items()
                     if parse_rfc3339(stamp) + DISRUPTED_POD_TIMEOUT > now
                     and any(p["metadata"]["name"] == name and not is_terminating(p) for p in pods)}
        healthy = sum(1 for p in pods if not is_terminating(p) and is_ready(p)
                      and p["metadata"]["name"] not in disrupted)
        expected, desired = self._expected_and_desired(pdb, pods)
        allowed = max(0, healthy - desired)
        status = {"observedGeneration": pdb["metadata"].get("generation", 1), "currentHealthy": healthy,
                  "desiredHealthy": desired, "expectedPods": expected, "disruptionsAllowed": allowed}
        if disrupted:
            status["disruptedPods"] = disrupted
        old_conditions = [c for c in (pdb.get("status") or {}).get("conditions") or () if c["type"] == "DisruptionAllowed"]
        value, reason = ("True", "SufficientPods") if allowed > 0 else ("False", "InsufficientPods")
        previous = old_conditions[0] if old_conditions else None
        status["conditions"] = [{"type": "DisruptionAllowed", "status": value, "reason": reason, "message": "",
                                 "observedGeneration": status["observedGeneration"],
                                 "lastTransitionTime": previous["lastTransitionTime"]
                                 if previous and previous["status"] == value else now_rfc3339()}]
        if status != pdb.get("status"):
            self.store.mutate(PDBS, *key, lambda p: p.update(status=status), subresource="status")
        if disrupted:
            self.requeue_after(key, min(parse_rfc3339(s) + DISRUPTED_POD_TIMEOUT - now for s in disrupted.values()) + 0.1)

    def _expected_and_desired(self, pdb: dict, pods: list[dict]) -> tuple[int, int]:
        spec = pdb["spec"]
        min_available, max_unavailable = spec.get("minAvailable"), spec.get("maxUnavailable")
        if isinstance(min_available, int) or (isinstance(min_available, str) and min_available.isdigit()):
            return len(pods), int(min_available)
        expected = self._expected_scale(pods)
        if min_available is not None:
            return expected, math.ceil(int(str(min_available).rstrip("%")) * expected / 100)
        if max_unavailable is None:
            return expected, expected
        if isinstance(max_unavailable, str) and max_unavailable.endswith("%"):
            unavailable = math.ceil(int(max_unavailable[:-1]) * expected / 100)
        else:
            unavailable = int(max_unavailable)
        return expected, max(0, expected - unavailable)

    def _expected_scale(self, pods: list[dict]) -> int:
        """Sum of spec.replicas of the pods' controllers (a ReplicaSet counts as its Deployment)."""
        scales: dict[str, int] = {}
        for pod in pods:
            ref = controller_of(pod)
            if ref is None:
                continue
            ns = pod["metadata"]["namespace"]
            if ref["kind"] == "ReplicaSet":
                rs = self.cache.get(REPLICASETS, ns, ref["name"])
                owner = controller_of(rs) if rs is not None else None
                if owner is not None and owner["kind"] == "Deployment":
                    d = self.cache.get(DEPLOYMENTS, ns, owner["name"])
                    if d is not None:
                        scales[d["metadata"]["uid"]] = int(d["spec"].get("replicas", 1))
                        continue
                if rs is not None:
                    scales[rs["metadata"]["uid"]] = int(rs["spec"].get("replicas", 1))
            elif ref["kind"] == "StatefulSet":
                sts = self.cache.get(STATEFULSETS, ns, ref["name"])
                if sts is not None:
                    scales[sts["metadata"]["uid"]] = int(sts["spec"].get("replicas", 1))
        return sum(scales.values())


def evict(store: Store, namespace: str, name: str, delete_options: dict | None) -> None:
    """The pods/eviction subresource: delete the pod unless that would break its PodDisruptionBudget."""
    options = delete_options or {}
    dry_run = "All" in (options.get("dryRun") or ())
    pod = store.get(PODS, namespace, name)
    if not _budget_applies(pod):
        _delete(store, namespace, name, options, dry_run)
        return
    reqs_by_pdb = [(p, pdb_requirements(p)) for p in store.list(PDBS, namespace)]
    pdbs = [p for p, reqs in reqs_by_pdb if reqs is not None and labels.matches(reqs, pod["metadata"].get("labels"))]
    if not pdbs:
        _delete(store, namespace, name, options, dry_run)
        return
    if len(pdbs) > 1:
        raise errors.ApiError(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the "
                                                    "eviction subresource does not support.")
    pdb = pdbs[0]
    pdb_name = pdb["metadata"]["name"]

    def take_disruption(current: dict) -> None:
        status = current.setdefault("status", {})
        if status.get("observedGeneration", 0) < current["metadata"].get("generation", 1):
            raise _violation(f"The disruption budget {pdb_name} is still being processed by the server.")
        policy = current["spec"].get("unhealthyPodEvictionPolicy") or "IfHealthyBudget"
        if not is_ready(pod) and (policy == "AlwaysAllow"
                                  or status.get("currentHealthy", 0) >= status.get("desiredHealthy", 0)):
            raise _Unhealthy()
        if status.get("disruptionsAllowed", 0) < 0:
            raise errors.ApiError(403, "Forbidden", "pdb disruptions allowed is negative")
        if len(status.get("disruptedPods") or {}) > MAX_DISRUPTED_PODS:
            raise errors.ApiError(403, "Forbidden", "DisruptedPods map too big - too many evictions not confirmed "
                                                    "by PDB controller")
        if status.get("disruptionsAllowed", 0) == 0:
            raise _violation(f"The disruption budget {pdb_name} needs {status.get('desiredHealthy', 0)} healthy "
                             f"pods and has {status.get('currentHealthy', 0)} currently")
        status["disruptionsAllowed"] -= 1
        if status["disruptionsAllowed"] == 0:
            for c in status.get("conditions") or ():
                if c["type"] == "DisruptionAllowed":
                    c.update(status="False", reason="InsufficientPods", lastTransitionTime=now_rfc3339())
        status.setdefault("disruptedPods", {})[name] = now_rfc3339()

    with store._lock:   # budget check, decrement and delete are one step, as one etcd transaction upstream
        try:
            if not dry_run:
                store.mutate(PDBS, namespace, pdb_name, take_disruption, subresource="status")
            else:
                take_disruption(store.get(PDBS, namespace, pdb_name))
        except _Unhealthy:
            pass
        _delete(store, namespace, name, options, dry_run)


class _Unhealthy(Exception):
    """The pod is not ready and the budget is met: it may go without spending a disruption."""


def _violation(cause: str) -> errors.ApiError:
    return errors.ApiError(429, "TooManyRequests", VIOLATION,
                           {"causes": [{"reason": "DisruptionBudget", "message": cause}]})


def _budget_applies(pod: dict) -> bool:
    """Terminating, finished and pending pods are evicted without consulting budgets (upstream canIgnorePDB)."""
    return not is_terminating(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed", "Pending")


def _delete(store: Store, namespace: str, name: str, options: dict, dry_run: bool) -> None:
    grace = options.get("gracePeriodSeconds")
    store.delete(PODS, namespace, name, grace_period=grace, preconditions=options.get("preconditions"),
                 propagation=options.get("propagationPolicy"), dry_run=dry_run)
