"""deployment-controller: rolls a Deployment's pod template out through ReplicaSets (RollingUpdate or
Recreate), following upstream's sync/rolling/recreate/progress logic so `kubectl rollout status` reads
the same status and conditions it reads on a real cluster."""
from __future__ import annotations

import json
import math
import time

from ..resources import DEPLOYMENTS, PODS, REPLICASETS
from ..store import Event, copy_json, now_rfc3339
from .base import Controller, obj_key, same_keys_unless_status
from .owners import controller_of, controller_ref, owner_keys
from .pods import parse_time

COMPONENT = "deployment-controller"
REVISION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


class DeploymentController(Controller):
    name = "deployment"

    def watches(self):
        return {DEPLOYMENTS.key: same_keys_unless_status, REPLICASETS.key: self._rs_owner, PODS.key: self._pod_gone}

    def initial_keys(self):
        return [obj_key(d) for d in self.cache.list(DEPLOYMENTS)]

    @staticmethod
    def _rs_owner(event: Event):
        keys = owner_keys(event.object, "Deployment")
        return keys + (owner_keys(event.old, "Deployment") if event.old is not None else [])

    def _pod_gone(self, event: Event):
        """Recreate waits for old pods to disappear; their deletion must wake the deployment."""
        if event.type != "DELETED":
            return ()
        ref = controller_of(event.object)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return ()
        rs = self.cache.get(REPLICASETS, event.object["metadata"]["namespace"], ref["name"])
        return owner_keys(rs, "Deployment") if rs is not None else ()

    # ---- sync ----------------------------------------------------------------------------------------
    def sync(self, key) -> None:
        d = self.cache.get(DEPLOYMENTS, *key)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return
        d = dict(d, status=copy_json(d.get("status") or {}))   # the sync changes only the status of its copy
        self._check_paused_condition(d)
        rs_list = [_working_copy(rs) for rs in self.cache.controlled_by(REPLICASETS, d["metadata"]["uid"])]
        new_rs = find_new_rs(d, rs_list)
        old_rss = [rs for rs in rs_list if new_rs is None or rs["metadata"]["uid"] != new_rs["metadata"]["uid"]]
        if d["spec"].get("paused"):
            self._sync_paused(d, new_rs, old_rss)
            return
        strategy = (d["spec"].get("strategy") or {}).get("type", "RollingUpdate")
        if strategy == "Recreate":
            self._rollout_recreate(d, new_rs, old_rss)
        else:
            self._rollout_rolling(d, new_rs, old_rss)

    def _check_paused_condition(self, d: dict) -> None:
        current = progressing_condition(d)
        paused = bool(d["spec"].get("paused"))
        if paused and (current is None or current.get("reason") != "DeploymentPaused"):
            self._set_progressing(d["status"], "Unknown", "DeploymentPaused", "Deployment is paused")
        elif not paused and current is not None and current.get("reason") == "DeploymentPaused":
            self._set_progressing(d["status"], "Unknown", "DeploymentResumed", "Deployment is resumed")

    def _sync_paused(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> None:
        """Paused: no rollout, but scaling still applies to the current ReplicaSet."""
        active = [rs for rs in old_rss if rs["spec"].get("replicas", 0) > 0]
        if new_rs is not None and not active:
            self._scale(d, new_rs, replicas(d))
        self._write_status(d, self._calculate_status(d, new_rs, old_rss))

    def _rollout_rolling(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> None:
        new_rs = self._ensure_new_rs(d, new_rs, old_rss)
        if self._reconcile_new_rs(d, new_rs, old_rss) or self._reconcile_old_rss(d, new_rs, old_rss):
            self._sync_rollout_status(d, new_rs, old_rss)
            return
        if self._complete(d, new_rs, old_rss):
            self._cleanup(d, old_rss)
        self._sync_rollout_status(d, new_rs, old_rss)

    def _rollout_recreate(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> None:
        scaled = False
        for rs in old_rss:
            if rs["spec"].get("replicas", 0) != 0:
                scaled |= self._scale(d, rs, 0)
        if scaled:
            self._sync_rollout_status(d, new_rs, old_rss)
            return
        if self._old_pods_running(old_rss):
            self._sync_rollout_status(d, new_rs, old_rss)
            return
        new_rs = self._ensure_new_rs(d, new_rs, old_rss)
        if new_rs["spec"].get("replicas", 0) != replicas(d):
            self._scale(d, new_rs, replicas(d))
            self._sync_rollout_status(d, new_rs, old_rss)
            return
        if self._complete(d, new_rs, old_rss):
            self._cleanup(d, old_rss)
        self._sync_rollout_status(d, new_rs, old_rss)

    def _old_pods_running(self, old_rss: list[dict]) -> bool:
        for rs in old_rss:
            if rs.get("status", {}).get("replicas", 0) > 0:
                return True
            for pod in self.cache.controlled_by(PODS, rs["metadata"]["uid"]):
                if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                    return True
        return False

    # ---- the new ReplicaSet --------------------------------------------------------------------------
    def _ensure_new_rs(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> dict:
        max_old_revision = max((revision_of(rs) for rs in old_rss), default=0)
        ns = d["metadata"]["namespace"]
        if new_rs is not None:
            wanted = str(max(revision_of(new_rs), max_old_revision + 1))
            annotations = new_rs["metadata"].setdefault("annotations", {})
            if annotations.get(REVISION) != wanted or d["spec"].get("minReadySeconds", 0) != \
                    new_rs["spec"].get("minReadySeconds", 0):
                def bump(rs: dict) -> None:
                    rs["metadata"].setdefault("annotations", {})[REVISION] = wanted
                    rs["spec"]["minReadySeconds"] = d["spec"].get("minReadySeconds", 0)
                new_rs.update(self.store.mutate(REPLICASETS, ns, new_rs["metadata"]["name"], bump, touches=("spec",)))
            self._set_deployment_revision(d, wanted)
            if progressing_condition(d) is None:
                self._set_progressing(d["status"], "True", "FoundNewReplicaSet",
                                      f'Found new replica set "{new_rs["metadata"]["name"]}"')
            return new_rs
        template_hash = pod_template_hash(d["spec"]["template"], (d.get("status") or {}).get("collisionCount"))
        template = copy_json(d["spec"]["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = template_hash
        selector = copy_json(d["spec"].get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = template_hash
        revision = str(max_old_revision + 1)
        initial = self._new_rs_replicas(d, None, old_rss) \
            if (d["spec"].get("strategy") or {}).get("type", "RollingUpdate") != "Recreate" else 0
        rs = {"metadata": {"name": f"{d['metadata']['name']}-{template_hash}", "namespace": ns,
                           "labels": dict(template["metadata"]["labels"]),
                           "annotations": dict(copied_annotations(d), **{
                               DESIRED_REPLICAS: str(replicas(d)), MAX_REPLICAS: str(replicas(d) + max_surge(d)),
                               REVISION: revision}),
                           "ownerReferences": [controller_ref(d, DEPLOYMENTS)]},
              "spec": {"replicas": initial, "minReadySeconds": d["spec"].get("minReadySeconds", 0),
                       "selector": selector, "template": template}}
        new_rs = self.store.create(REPLICASETS, rs)
        if initial > 0:
            self._scaling_event(d, new_rs, "up", 0, initial)
        self._set_deployment_revision(d, revision)
        self._set_progressing(d["status"], "True", "NewReplicaSetCreated",
                              f'Created new replica set "{new_rs["metadata"]["name"]}"')
        self._write_status(d, d["status"])
        return new_rs

    def _set_deployment_revision(self, d: dict, revision: str) -> None:
        d.setdefault("status", {})
        if d["metadata"].get("annotations", {}).get(REVISION) == revision:
            return
        updated = self.store.mutate(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"],
                                    lambda obj: obj["metadata"].setdefault("annotations", {}).update({REVISION: revision}),
                                    touches=())
        d["metadata"] = updated["metadata"]

    # ---- rolling update (upstream rolling.go) -------------------------------------------------------
    def _new_rs_replicas(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> int:
        current = sum(rs["spec"].get("replicas", 0) for rs in old_rss) + (new_rs["spec"].get("replicas", 0) if new_rs else 0)
        new_count = new_rs["spec"].get("replicas", 0) if new_rs else 0
        scale_up = min(replicas(d) + max_surge(d) - current, replicas(d) - new_count)
        return new_count + max(0, scale_up)

    def _reconcile_new_rs(self, d: dict, new_rs: dict, old_rss: list[dict]) -> bool:
        have = new_rs["spec"].get("replicas", 0)
        if have == replicas(d):
            return False
        if have > replicas(d):
            return self._scale(d, new_rs, replicas(d))
        return self._scale(d, new_rs, self._new_rs_replicas(d, new_rs, old_rss))

    def _reconcile_old_rss(self, d: dict, new_rs: dict, old_rss: list[dict]) -> bool:
        if sum(rs["spec"].get("replicas", 0) for rs in old_rss) == 0:
            return False
        all_pods = sum(rs["spec"].get("replicas", 0) for rs in old_rss + [new_rs])
        min_available = replicas(d) - max_unavailable(d)
        new_unavailable = new_rs["spec"].get("replicas", 0) - new_rs.get("status", {}).get("availableReplicas", 0)
        max_scaled_down = all_pods - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        old_rss = sorted(old_rss, key=_created)
        cleaned = 0
        for rs in old_rss:   # unhealthy old replicas first: scaling them down costs no availability
            if cleaned >= max_scaled_down:
                break
            spec_replicas = rs["spec"].get("replicas", 0)
            unhealthy = spec_replicas - rs.get("status", {}).get("availableReplicas", 0)
            if spec_replicas == 0 or unhealthy <= 0:
                continue
            down = min(max_scaled_down - cleaned, unhealthy)
            self._scale(d, rs, spec_replicas - down)
            cleaned += down
        available = sum(rs.get("status", {}).get("availableReplicas", 0) for rs in old_rss + [new_rs])
        scaled_down = 0
        if available > min_available:
            budget = available - min_available
            for rs in old_rss:
                if scaled_down >= budget:
                    break
                spec_replicas = rs["spec"].get("replicas", 0)
                if spec_replicas == 0:
                    continue
                down = min(spec_replicas, budget - scaled_down)
                self._scale(d, rs, spec_replicas - down)
                scaled_down += down
        return cleaned + scaled_down > 0

    def _scale(self, d: dict, rs: dict, count: int) -> bool:
        """Scale a ReplicaSet (and stamp the replica annotations) with a ScalingReplicaSet event."""
        before = rs["spec"].get("replicas", 0)
        annotations = rs["metadata"].get("annotations") or {}
        wanted = {DESIRED_REPLICAS: str(replicas(d)), MAX_REPLICAS: str(replicas(d) + max_surge(d))}
        if before == count and all(annotations.get(k) == v for k, v in wanted.items()):
            return False

        def scale(obj: dict) -> None:
            obj["spec"]["replicas"] = count
            obj["metadata"].setdefault("annotations", {}).update(wanted)
        self.store.mutate(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"], scale, echo=False,
                          touches=("spec",))
        scale(rs)   # our copy follows the stored one
        if before != count:
            self._scaling_event(d, rs, "up" if count > before else "down", before, count)
        return before != count

    def _scaling_event(self, d: dict, rs: dict, direction: str, before: int, after: int) -> None:
        self.events.normal(d, "ScalingReplicaSet",
                           f"Scaled {direction} replica set {rs['metadata']['name']} from {before} to {after}", COMPONENT)

    def _cleanup(self, d: dict, old_rss: list[dict]) -> None:
        """Delete the oldest fully scaled-down ReplicaSets beyond revisionHistoryLimit."""
        limit = int(d["spec"].get("revisionHistoryLimit", 10))
        idle = sorted((rs for rs in old_rss if rs["spec"].get("replicas", 0) == 0
                       and rs.get("status", {}).get("replicas", 0) == 0
                       and not rs["metadata"].get("deletionTimestamp")), key=revision_of)
        for rs in idle[:max(0, len(idle) - limit)]:
            self.store.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])

    # ---- status (upstream sync.go calculateStatus and progress.go) -----------------------------------
    def _calculate_status(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> dict:
        all_rss = old_rss + ([new_rs] if new_rs else [])
        available = sum(rs.get("status", {}).get("availableReplicas", 0) for rs in all_rss)
        total_spec = sum(rs["spec"].get("replicas", 0) for rs in all_rss)
        status = copy_json(d.get("status") or {})
        status.update({
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": sum(rs.get("status", {}).get("replicas", 0) for rs in all_rss),
            "updatedReplicas": new_rs.get("status", {}).get("replicas", 0) if new_rs else 0,
            "readyReplicas": sum(rs.get("status", {}).get("readyReplicas", 0) for rs in all_rss),
            "availableReplicas": available,
            "unavailableReplicas": max(0, total_spec - available),
        })
        for field in ("updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas", "replicas"):
            if not status[field]:
                del status[field]
        if available >= replicas(d) - max_unavailable(d):
            set_deployment_condition(status, "Available", "True", "MinimumReplicasAvailable",
                                     "Deployment has minimum availability.")
        else:
            set_deployment_condition(status, "Available", "False", "MinimumReplicasUnavailable",
                                     "Deployment does not have minimum availability.")
        return status

    def _complete(self, d: dict, new_rs: dict, old_rss: list[dict]) -> bool:
        status = self._calculate_status(d, new_rs, old_rss)
        want = replicas(d)
        return (status.get("updatedReplicas", 0) == want and status.get("replicas", 0) == want
                and status.get("availableReplicas", 0) == want
                and status.get("observedGeneration", 0) >= d["metadata"].get("generation", 1))

    def _sync_rollout_status(self, d: dict, new_rs: dict | None, old_rss: list[dict]) -> None:
        """Upstream syncRolloutStatus: complete, progressing, or timed out against progressDeadlineSeconds."""
        status = self._calculate_status(d, new_rs, old_rss)
        deadline = d["spec"].get("progressDeadlineSeconds", 600)
        current = progressing_condition({"status": status})
        complete_before = status.get("replicas", 0) == status.get("updatedReplicas", 0) and current is not None \
            and current.get("reason") == "NewReplicaSetAvailable"
        if new_rs is not None and not complete_before:
            name = new_rs["metadata"]["name"]
            if self._complete(d, new_rs, old_rss):
                self._set_progressing(status, "True", "NewReplicaSetAvailable",
                                      f'ReplicaSet "{name}" has successfully progressed.')
            elif _progressed(d.get("status") or {}, status):
                stamp = now_rfc3339()
                transition = current["lastTransitionTime"] if current and current["status"] == "True" else stamp
                status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Progressing"]
                status["conditions"].append({"type": "Progressing", "status": "True", "lastUpdateTime": stamp,
                                             "lastTransitionTime": transition, "reason": "ReplicaSetUpdated",
                                             "message": f'ReplicaSet "{name}" is progressing.'})
            elif current is not None and current.get("reason") != "ProgressDeadlineExceeded" and \
                    parse_time(current["lastUpdateTime"]) + deadline < time.time():
                self._set_progressing(status, "False", "ProgressDeadlineExceeded",
                                      f'ReplicaSet "{name}" has timed out progressing.')
            current = progressing_condition({"status": status})
            if current is not None and current.get("reason") not in ("NewReplicaSetAvailable", "ProgressDeadlineExceeded"):
                left = parse_time(current["lastUpdateTime"]) + deadline - time.time()
                self.requeue_after(obj_key(d), max(1.0, left + 1))
        self._write_status(d, status)

    @staticmethod
    def _set_progressing(status: dict, value: str, reason: str, message: str) -> None:
        set_deployment_condition(status, "Progressing", value, reason, message)

    def _write_status(self, d: dict, status: dict) -> None:
        d["status"] = status
        current = self.cache.get(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"])
        if current is None or current.get("status") == status:
            return
        self.store.mutate(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"],
                          lambda obj: obj.update(status=status), subresource="status", echo=False)


# ---- helpers shared with tests and kubectl-facing logic ---------------------------------------------------
def replicas(d: dict) -> int:
    value = d["spec"].get("replicas")
    return 1 if value is None else int(value)


def resolve_int_or_percent(value, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(value)


def _fenceposts(d: dict) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as upstream ResolveFenceposts: surge rounds up, unavailable down, never both 0."""
    strategy = d["spec"].get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return 0, 0
    rolling = strategy.get("rollingUpdate") or {}
    surge = resolve_int_or_percent(rolling.get("maxSurge", "25%"), replicas(d), True)
    unavailable = resolve_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas(d), False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(d: dict) -> int:
    return _fenceposts(d)[0]


def max_unavailable(d: dict) -> int:
    """Upstream MaxUnavailable: 0 for Recreate or no replicas, never more than the replicas."""
    if (d["spec"].get("strategy") or {}).get("type") == "Recreate" or replicas(d) == 0:
        return 0
    return min(_fenceposts(d)[1], replicas(d))


def pod_template_hash(template: dict, collision_count: int | None = None) -> str:
    """FNV-32a over the template, encoded with rand.SafeEncodeString like upstream ComputeHash."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":"))
    if collision_count:
        data += str(collision_count)
    h = 0x811C9DC5
    for byte in data.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in str(h))


def copied_annotations(d: dict) -> dict:
    """Deployment annotations a new ReplicaSet inherits (change-cause for `rollout history`), as upstream."""
    skip = {REVISION, DESIRED_REPLICAS, MAX_REPLICAS, "deployment.kubernetes.io/revision-history",
            "kubectl.kubernetes.io/last-applied-configuration"}
    return {k: v for k, v in (d["metadata"].get("annotations") or {}).items() if k not in skip}


def _working_copy(rs: dict) -> dict:
    """A cached ReplicaSet copied as deep as the sync changes it: spec fields and annotations."""
    meta = rs["metadata"]
    return dict(rs, metadata=dict(meta, annotations=dict(meta.get("annotations") or {})), spec=dict(rs["spec"]))


def _template_without_hash(rs: dict) -> dict:
    template = rs["spec"].get("template") or {}
    meta = template.get("metadata") or {}
    if HASH_LABEL not in (meta.get("labels") or {}):
        return template
    return dict(template, metadata=dict(meta, labels={k: v for k, v in meta["labels"].items() if k != HASH_LABEL}))


def find_new_rs(d: dict, rs_list: list[dict]) -> dict | None:
    """The oldest ReplicaSet whose template equals the Deployment's (ignoring pod-template-hash)."""
    template = d["spec"]["template"]
    for rs in sorted(rs_list, key=_created):
        if _template_without_hash(rs) == template:
            return rs
    return None


def revision_of(rs: dict) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, 0))
    except ValueError:
        return 0


def progressing_condition(d: dict) -> dict | None:
    for c in (d.get("status") or {}).get("conditions") or ():
        if c["type"] == "Progressing":
            return c
    return None


def set_deployment_condition(status: dict, type_: str, value: str, reason: str, message: str) -> None:
    """Upstream SetDeploymentCondition: same status and reason is a no-op; the changed one goes last."""
    conditions = status.setdefault("conditions", [])
    current = next((c for c in conditions if c["type"] == type_), None)
    if current is not None and current["status"] == value and current.get("reason") == reason:
        return
    stamp = now_rfc3339()
    transition = current["lastTransitionTime"] if current is not None and current["status"] == value else stamp
    status["conditions"] = [c for c in conditions if c["type"] != type_] + [
        {"type": type_, "status": value, "lastUpdateTime": stamp, "lastTransitionTime": transition,
         "reason": reason, "message": message}]


def _progressed(old: dict, new: dict) -> bool:
    """Upstream DeploymentProgressing: more updated/ready/available replicas, or fewer old ones."""
    old_old = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_old = new.get("replicas", 0) - new.get("updatedReplicas", 0)
    return (new.get("updatedReplicas", 0) > old.get("updatedReplicas", 0) or new_old < old_old
            or new.get("readyReplicas", 0) > old.get("readyReplicas", 0)
            or new.get("availableReplicas", 0) > old.get("availableReplicas", 0))


def _created(rs: dict) -> tuple:
    return rs["metadata"].get("creationTimestamp", ""), rs["metadata"]["name"]
