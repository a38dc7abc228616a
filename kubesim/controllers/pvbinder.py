"""persistentvolume-controller plus the provisioners: binds claims to volumes, provisions a host directory
per dynamically provisioned PV (network class: any node; local-path: pinned to the selected node), and
reclaims volumes whose claim is gone."""
from __future__ import annotations

import os
import shutil
import tempfile

from ..resources import PODS, PVCS, PVS, STORAGECLASSES
from ..store import Event
from .base import Context, Controller, obj_key
from .quantity import parse_quantity
from .scheduler import SELECTED_NODE

COMPONENT = "persistentvolume-controller"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
HOST_PATH = "kubesim.io/host-path"
LOCAL_PROVISIONERS = ("rancher.io/local-path",)   # volumes that live on one node
PROTECTION = "kubernetes.io/pvc-protection"      # a claim in use by a pod is not removed until the pod is gone


def csi_driver_name(provisioner: str) -> str:
    """A CSI driver name for a provisioner name: no "/" (the API server validates it as a DNS subdomain)."""
    first, _, rest = provisioner.partition("/")
    return f"{rest}.{first}" if rest else first


def provisioned_volume(pvc: dict, sc: dict, node: str | None, volumes_dir: str) -> dict:
    """The PV a provisioner creates for ``pvc`` of class ``sc`` (with its directory under ``volumes_dir``):
    node-local classes get a `local` PV pinned to ``node``, the others a CSI volume any node can mount."""
    provisioner = sc.get("provisioner", "")
    name = f"pvc-{pvc['metadata']['uid']}"
    path = os.path.join(volumes_dir, name)
    os.makedirs(path, exist_ok=True)
    ns, claim = obj_key(pvc)
    spec = {"capacity": {"storage": ((pvc["spec"].get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
            "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
            "storageClassName": sc["metadata"]["name"], "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": claim, "apiVersion": "v1",
                         "uid": pvc["metadata"]["uid"], "resourceVersion": pvc["metadata"].get("resourceVersion")}}
    if provisioner in LOCAL_PROVISIONERS and node:
        spec["local"] = {"path": path}
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
    else:
        spec["csi"] = {"driver": csi_driver_name(provisioner), "volumeHandle": name, "fsType": "ext4"}
    return {"metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": provisioner,
                                                       HOST_PATH: path}}, "spec": spec}


class PersistentVolumeBinder(Controller):
    name = "pvbinder"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._volumes_dir = os.path.join(ctx.config.work_dir or tempfile.mkdtemp(prefix="kubesim-volumes-"), "volumes")

    def watches(self):
        return {PVCS.key: self._claim_keys, PVS.key: self._pv_keys, PODS.key: self._claims_released}

    @staticmethod
    def _claims_released(event: Event):
        """A pod leaving may let a protected claim that is being deleted go."""
        if event.type != "DELETED":
            return ()
        ns = event.object["metadata"]["namespace"]
        return [("pvc", ns, v["persistentVolumeClaim"]["claimName"])
                for v in event.object["spec"].get("volumes") or () if v.get("persistentVolumeClaim")]

    @staticmethod
    def _claim_keys(event: Event):
        """A claim's change, and its volume when the claim is gone (reclaim)."""
        keys = [("pvc", *obj_key(event.object))]
        if event.type == "DELETED" and event.object["spec"].get("volumeName"):
            keys.append(("pv", "", event.object["spec"]["volumeName"]))
        return keys

    def initial_keys(self):
        return [("pvc", *obj_key(c)) for c in self.cache.list(PVCS)] + \
               [("pv", "", pv["metadata"]["name"]) for pv in self.cache.list(PVS)]

    @staticmethod
    def _pv_keys(event: Event):
        keys = [("pv", "", event.object["metadata"]["name"])]
        ref = event.object.get("spec", {}).get("claimRef")
        if ref:
            keys.append(("pvc", ref.get("namespace", ""), ref["name"]))
        return keys

    def sync(self, key) -> None:
        kind, ns, name = key
        if kind == "pv":
            self._sync_volume(name)
        else:
            self._sync_claim(ns, name)

    # ---- claims --------------------------------------------------------------------------------------
    def _sync_claim(self, ns: str, name: str) -> None:
        pvc = self.cache.get(PVCS, ns, name)
        if pvc is None:
            return
        finalizers = pvc["metadata"].get("finalizers") or []
        if pvc["metadata"].get("deletionTimestamp"):
            if PROTECTION in finalizers and not self._claim_in_use(ns, name):
                self.store.mutate(PVCS, ns, name, lambda c: c["metadata"].update(
                    finalizers=[f for f in c["metadata"].get("finalizers") or () if f != PROTECTION]))
            return
        if PROTECTION not in finalizers:
            self.store.mutate(PVCS, ns, name, lambda c: c["metadata"].update(
                finalizers=list(c["metadata"].get("finalizers") or ()) + [PROTECTION]))
            return
        if "storageClassName" not in pvc["spec"]:
            default = self._default_class()
            if default is not None:
                self.store.mutate(PVCS, ns, name, lambda c: c["spec"].update(storageClassName=default))
                return
        volume_name = pvc["spec"].get("volumeName")
        if volume_name:
            pv = self.cache.get(PVS, None, volume_name)
            if pv is not None:
                self._mark_bound(pvc, pv)
            else:
                self._set_claim_phase(pvc, "Lost")
            return
        pv = self._find_static_volume(pvc)
        if pv is None:
            sc = self.cache.get(STORAGECLASSES, None, pvc["spec"].get("storageClassName") or "")
            if sc is None:
                self._set_claim_phase(pvc, "Pending")
                if pvc["spec"].get("storageClassName"):
                    self.events.warning(pvc, "ProvisioningFailed",
                                        f'storageclass.storage.k8s.io "{pvc["spec"]["storageClassName"]}" not found',
                                        COMPONENT)
                return
            selected = (pvc["metadata"].get("annotations") or {}).get(SELECTED_NODE)
            if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and not selected:
                self._set_claim_phase(pvc, "Pending")
                self.events.normal(pvc, "WaitForFirstConsumer",
                                   "waiting for first consumer to be created before binding", COMPONENT)
                return
            pv = self._provision(pvc, sc, selected)
        self._bind(pvc, pv)

    def _claim_in_use(self, ns: str, name: str) -> bool:
        return any((v.get("persistentVolumeClaim") or {}).get("claimName") == name
                   for p in self.cache.list(PODS, ns) for v in p["spec"].get("volumes") or ())

    def _default_class(self) -> str | None:
        for sc in self.cache.list(STORAGECLASSES):
            if (sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true":
                return sc["metadata"]["name"]
        return None

    def _find_static_volume(self, pvc: dict) -> dict | None:
        """An Available PV of the claim's class, big enough, offering its access modes (smallest first)."""
        want = parse_quantity(((pvc["spec"].get("resources") or {}).get("requests") or {}).get("storage", 0))
        modes = set(pvc["spec"].get("accessModes") or ())
        candidates = []
        for pv in self.cache.list(PVS):
            ref = pv["spec"].get("claimRef")
            if ref and (ref.get("namespace"), ref.get("name")) != obj_key(pvc):
                continue
            if ref and ref.get("uid") and ref["uid"] != pvc["metadata"]["uid"]:
                continue
            if (pv["spec"].get("storageClassName") or "") != (pvc["spec"].get("storageClassName") or ""):
                continue
            if not modes <= set(pv["spec"].get("accessModes") or ()):
                continue
            size = parse_quantity((pv["spec"].get("capacity") or {}).get("storage", 0))
            if size >= want and (pv.get("status") or {}).get("phase", "Available") in ("Available", "Pending"):
                candidates.append((size, pv["metadata"]["name"], pv))
        return min(candidates)[2] if candidates else None

    def _provision(self, pvc: dict, sc: dict, node: str | None) -> dict:
        ns, claim = obj_key(pvc)
        provisioner = sc.get("provisioner", "")
        self.events.normal(pvc, "Provisioning", f'External provisioner is provisioning volume for claim "{ns}/{claim}"',
                           provisioner)
        pv = self.store.create(PVS, provisioned_volume(pvc, sc, node, self._volumes_dir))
        self.events.normal(pvc, "ProvisioningSucceeded", f"Successfully provisioned volume {pv['metadata']['name']}",
                           provisioner)
        return pv

    def _bind(self, pvc: dict, pv: dict) -> None:
        ns, claim = obj_key(pvc)
        ref = {"kind": "PersistentVolumeClaim", "namespace": ns, "name": claim, "apiVersion": "v1",
               "uid": pvc["metadata"]["uid"], "resourceVersion": pvc["metadata"].get("resourceVersion")}
        if pv["spec"].get("claimRef", {}).get("uid") != ref["uid"]:
            pv = self.store.mutate(PVS, None, pv["metadata"]["name"], lambda v: v["spec"].update(claimRef=ref))
        sc = self.cache.get(STORAGECLASSES, None, pvc["spec"].get("storageClassName") or "")
        provisioner = sc.get("provisioner") if sc else None

        def bind(c: dict) -> None:
            c["spec"]["volumeName"] = pv["metadata"]["name"]
            annotations = c["metadata"].setdefault("annotations", {})
            annotations["pv.kubernetes.io/bind-completed"] = "yes"
            annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
            if provisioner:
                annotations["volume.beta.kubernetes.io/storage-provisioner"] = provisioner
                annotations["volume.kubernetes.io/storage-provisioner"] = provisioner
        pvc = self.store.mutate(PVCS, ns, claim, bind)
        self._mark_bound(pvc, pv)

    def _mark_bound(self, pvc: dict, pv: dict) -> None:
        if (pv.get("status") or {}).get("phase") != "Bound":
            self.store.mutate(PVS, None, pv["metadata"]["name"], lambda v: v.update(status={"phase": "Bound"}),
                              subresource="status")
        status = {"phase": "Bound", "accessModes": pv["spec"].get("accessModes") or [],
                  "capacity": dict(pv["spec"].get("capacity") or {})}
        if pvc.get("status") != status:
            self.store.mutate(PVCS, *obj_key(pvc), lambda c: c.update(status=status), subresource="status")

    def _set_claim_phase(self, pvc: dict, phase: str) -> None:
        if (pvc.get("status") or {}).get("phase") != phase:
            self.store.mutate(PVCS, *obj_key(pvc), lambda c: c.update(status={"phase": phase}), subresource="status")

    # ---- volumes -------------------------------------------------------------------------------------
    def _sync_volume(self, name: str) -> None:
        pv = self.cache.get(PVS, None, name)
        if pv is None:
            return
        ref = pv["spec"].get("claimRef")
        if not ref:
            if (pv.get("status") or {}).get("phase") != "Available":
                self.store.mutate(PVS, None, name, lambda v: v.update(status={"phase": "Available"}),
                                  subresource="status")
            return
        pvc = self.cache.get(PVCS, ref.get("namespace"), ref["name"])
        if pvc is not None and (not ref.get("uid") or pvc["metadata"]["uid"] == ref["uid"]):
            return
        if pv["spec"].get("persistentVolumeReclaimPolicy", "Retain") == "Delete":
            path = (pv["metadata"].get("annotations") or {}).get(HOST_PATH)
            self.store.remove(PVS, None, name)
            if path and path.startswith(self._volumes_dir):
                shutil.rmtree(path, ignore_errors=True)
        elif (pv.get("status") or {}).get("phase") != "Released":
            self.store.mutate(PVS, None, name, lambda v: v.update(status={"phase": "Released"}), subresource="status")
