"""statefulset-controller: pods <sts>-<ordinal> with stable claims, OrderedReady or Parallel management,
RollingUpdate from the highest ordinal down to the partition, ControllerRevisions for the templates."""
from __future__ import annotations

import re

from ..resources import CONTROLLERREVISIONS, PODS, PVCS, STATEFULSETS
from ..store import Event, copy_json
from .base import Controller, obj_key, same_keys_unless_status
from .deployment import pod_template_hash
from .owners import controller_ref, owner_keys
from .pods import is_available, is_finished, is_ready, is_terminating, pod_from_template, seconds_until_available

COMPONENT = "statefulset-controller"
REVISION_LABEL = "controller-revision-hash"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
HASH_LABEL = "controller.kubernetes.io/hash"


class StatefulSetController(Controller):
    name = "statefulset"

    def watches(self):
        return {STATEFULSETS.key: same_keys_unless_status, PODS.key: self._pod_owner}

    def initial_keys(self):
        return [obj_key(s) for s in self.cache.list(STATEFULSETS)]

    @staticmethod
    def _pod_owner(event: Event):
        return owner_keys(event.object, "StatefulSet")

    def sync(self, key) -> None:
        sts = self.cache.get(STATEFULSETS, *key)
        if sts is None or sts["metadata"].get("deletionTimestamp"):
            return
        update_revision, revisions = self._revisions(sts)
        current_revision = (sts.get("status") or {}).get("currentRevision") or update_revision
        if current_revision not in revisions:
            current_revision = update_revision
        pods = {self._ordinal(sts, p): p for p in self.cache.controlled_by(PODS, sts["metadata"]["uid"])}
        pods.pop(None, None)
        self._reconcile(sts, pods, revisions, current_revision, update_revision)
        pods = {self._ordinal(sts, p): p for p in self.cache.controlled_by(PODS, sts["metadata"]["uid"])}
        pods.pop(None, None)
        self._update_status(sts, pods, current_revision, update_revision)

    @staticmethod
    def _ordinal(sts: dict, pod: dict) -> int | None:
        m = re.fullmatch(re.escape(sts["metadata"]["name"]) + r"-(\d+)", pod["metadata"]["name"])
        return int(m.group(1)) if m else None

    # ---- revisions -----------------------------------------------------------------------------------
    def _revisions(self, sts: dict) -> tuple[str, dict[str, dict]]:
        """The ControllerRevision of the current template (created when new) and all templates by name."""
        ns, name = obj_key(sts)
        owned = self.cache.controlled_by(CONTROLLERREVISIONS, sts["metadata"]["uid"])
        revisions = {cr["metadata"]["name"]: cr for cr in owned}
        template = sts["spec"]["template"]
        for cr in owned:
            if cr["data"]["spec"]["template"] == dict(template, **{"$patch": "replace"}):
                return cr["metadata"]["name"], revisions
        template_hash = pod_template_hash(template)
        cr_name = f"{name}-{template_hash}"
        cr = {"metadata": {"name": cr_name, "namespace": ns,
                           "labels": dict((sts["spec"].get("selector") or {}).get("matchLabels") or {},
                                          **{HASH_LABEL: template_hash}),
                           "ownerReferences": [controller_ref(sts, STATEFULSETS)]},
              "data": {"spec": {"template": dict(copy_json(template), **{"$patch": "replace"})}},
              "revision": max((cr.get("revision", 0) for cr in owned), default=0) + 1}
        existing = self.store.find(CONTROLLERREVISIONS, ns, cr_name)
        if existing is not None:
            cr = self.store.mutate(CONTROLLERREVISIONS, ns, cr_name, lambda c: c.update(revision=cr["revision"]))
        else:
            cr = self.store.create(CONTROLLERREVISIONS, cr)
        revisions[cr_name] = cr
        self._trim_history(sts, revisions, cr_name)
        return cr_name, revisions

    def _trim_history(self, sts: dict, revisions: dict[str, dict], keep: str) -> None:
        limit = int(sts["spec"].get("revisionHistoryLimit", 10))
        in_use = {keep, (sts.get("status") or {}).get("currentRevision")}
        in_use |= {p["metadata"].get("labels", {}).get(REVISION_LABEL)
                   for p in self.cache.controlled_by(PODS, sts["metadata"]["uid"])}
        idle = sorted((cr for n, cr in revisions.items() if n not in in_use), key=lambda c: c.get("revision", 0))
        for cr in idle[:max(0, len(idle) - limit)]:
            self.store.remove(CONTROLLERREVISIONS, cr["metadata"]["namespace"], cr["metadata"]["name"])
            revisions.pop(cr["metadata"]["name"], None)

    # ---- pods ----------------------------------------------------------------------------------------
    def _reconcile(self, sts: dict, pods: dict[int, dict], revisions: dict, current: str, update: str) -> None:
        replicas = int(sts["spec"].get("replicas", 1))
        ordered = sts["spec"].get("podManagementPolicy", "OrderedReady") != "Parallel"
        min_ready = int(sts["spec"].get("minReadySeconds", 0))
        strategy = sts["spec"].get("updateStrategy") or {}
        partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
        for ordinal in range(replicas):
            pod = pods.get(ordinal)
            if pod is not None and is_finished(pod) and not is_terminating(pod):
                self._delete_pod(sts, pod)    # failed or succeeded pods are replaced
                pod = None
                if ordered:
                    return
            if pod is None:
                revision = update if ordinal >= partition else current
                self._create_pod(sts, ordinal, revisions.get(revision) or revisions[update])
                if ordered:
                    return
                continue
            if ordered and (is_terminating(pod) or not is_available(pod, min_ready)):
                self._requeue_for_min_ready(sts, pod, min_ready)
                return
        condemned = sorted((o for o in pods if o >= replicas), reverse=True)
        for ordinal in condemned:
            pod = pods[ordinal]
            if ordered and any(is_terminating(p) for p in pods.values()):
                return
            if not is_terminating(pod):
                self._delete_pod(sts, pod)
            if ordered:
                return
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return
        if any(is_terminating(p) or not is_available(p, min_ready) for o, p in pods.items() if o < replicas):
            return     # roll one pod at a time, only over a healthy set
        for ordinal in range(replicas - 1, partition - 1, -1):
            pod = pods.get(ordinal)
            if pod is not None and pod["metadata"].get("labels", {}).get(REVISION_LABEL) != update:
                self._delete_pod(sts, pod)
                return

    def _requeue_for_min_ready(self, sts: dict, pod: dict, min_ready: int) -> None:
        wait = seconds_until_available(pod, min_ready)
        if wait is not None:
            self.requeue_after(obj_key(sts), wait)

    def _create_pod(self, sts: dict, ordinal: int, revision: dict) -> None:
        ns, name = obj_key(sts)
        pod_name = f"{name}-{ordinal}"
        if self.cache.get(PODS, ns, pod_name) is not None:
            return   # the previous incarnation is still terminating
        template = copy_json(revision["data"]["spec"]["template"])
        template.pop("$patch", None)
        for claim in sts["spec"].get("volumeClaimTemplates") or ():
            self._ensure_claim(sts, claim, ordinal)
        pod = pod_from_template(template, ns, controller_ref(sts, STATEFULSETS), name=pod_name,
                                extra_labels={REVISION_LABEL: revision["metadata"]["name"],
                                              POD_NAME_LABEL: pod_name, POD_INDEX_LABEL: str(ordinal)})
        pod["spec"]["hostname"] = pod_name
        if sts["spec"].get("serviceName"):
            pod["spec"]["subdomain"] = sts["spec"]["serviceName"]
        claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates") or ()}
        volumes = [v for v in pod["spec"].get("volumes") or () if v["name"] not in claims]
        volumes += [{"name": c, "persistentVolumeClaim": {"claimName": f"{c}-{name}-{ordinal}"}} for c in sorted(claims)]
        if volumes:
            pod["spec"]["volumes"] = volumes
        self.store.create(PODS, pod)
        self.events.normal(sts, "SuccessfulCreate", f"create Pod {pod_name} in StatefulSet {name} successful",
                           COMPONENT)

    def _ensure_claim(self, sts: dict, template: dict, ordinal: int) -> None:
        ns, name = obj_key(sts)
        claim_name = f"{template['metadata']['name']}-{name}-{ordinal}"
        if self.cache.get(PVCS, ns, claim_name) is not None:
            return
        meta = copy_json(template.get("metadata") or {})
        labels = dict(meta.get("labels") or {}, **((sts["spec"].get("selector") or {}).get("matchLabels") or {}))
        claim = {"metadata": {"name": claim_name, "namespace": ns, "labels": labels}, "spec": copy_json(template["spec"])}
        if meta.get("annotations"):
            claim["metadata"]["annotations"] = meta["annotations"]
        policy = sts["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
        if policy.get("whenDeleted") == "Delete":
            ref = controller_ref(sts, STATEFULSETS)
            claim["metadata"]["ownerReferences"] = [dict(ref, controller=True)]
        self.store.create(PVCS, claim)
        pod_name = f"{name}-{ordinal}"
        self.events.normal(sts, "SuccessfulCreate",
                           f"create Claim {claim_name} Pod {pod_name} in StatefulSet {name} success", COMPONENT)

    def _delete_pod(self, sts: dict, pod: dict) -> None:
        self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.events.normal(sts, "SuccessfulDelete",
                           f"delete Pod {pod['metadata']['name']} in StatefulSet {sts['metadata']['name']} successful",
                           COMPONENT)

    # ---- status --------------------------------------------------------------------------------------
    def _update_status(self, sts: dict, pods: dict[int, dict], current: str, update: str) -> None:
        min_ready = int(sts["spec"].get("minReadySeconds", 0))
        replicas = int(sts["spec"].get("replicas", 1))
        live = [p for p in pods.values() if not is_terminating(p)]
        revision_of = lambda p: p["metadata"].get("labels", {}).get(REVISION_LABEL)
        status = {"observedGeneration": sts["metadata"].get("generation", 1), "replicas": len(live),
                  "readyReplicas": sum(1 for p in live if is_ready(p)),
                  "availableReplicas": sum(1 for p in live if is_available(p, min_ready)),
                  "currentReplicas": sum(1 for p in live if revision_of(p) == current),
                  "updatedReplicas": sum(1 for p in live if revision_of(p) == update),
                  "currentRevision": current, "updateRevision": update, "collisionCount": 0}
        strategy = (sts["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate")
        if strategy == "RollingUpdate" and status["updatedReplicas"] == replicas == status["readyReplicas"] \
                and status["replicas"] == replicas:
            status["currentRevision"], status["currentReplicas"] = update, status["updatedReplicas"]
        status = {k: v for k, v in status.items() if v or k in ("replicas", "availableReplicas", "collisionCount")}
        if status != sts.get("status"):
            self.store.mutate(STATEFULSETS, *obj_key(sts), lambda s: s.update(status=status), subresource="status")
        waits = [w for w in (seconds_until_available(p, min_ready) for p in live) if w is not None]
        if waits:
            self.requeue_after(obj_key(sts), min(waits))
