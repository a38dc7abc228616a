"""The storage provisioner of kubesim's classes on the real control plane (an external provisioner, as
sig-storage's external-provisioner library runs): the real persistentvolume-controller binds claims and asks
for a volume by annotating the claim with its class's provisioner; this controller then creates the PV (a
directory of this machine, node-local classes pinned to the node the scheduler selected) and, once a
volume it made is Released with reclaim policy Delete, deletes it and its directory."""
from __future__ import annotations

import os
import shutil

from ..resources import PVCS, PVS, STORAGECLASSES
from ..store import Event
from .base import Context, Controller, obj_key
from .pvbinder import HOST_PATH, provisioned_volume
from .scheduler import SELECTED_NODE

PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"   # set by persistentvolume-controller
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


class Provisioner(Controller):
    name = "provisioner"

    def __init__(self, ctx: Context, provisioners: set[str]) -> None:
        super().__init__(ctx)
        self.provisioners = provisioners
        self._volumes_dir = os.path.join(ctx.config.work_dir, "volumes")

    def watches(self):
        return {PVCS.key: self._claim_key, PVS.key: self._volume_key}

    @staticmethod
    def _claim_key(event: Event):
        return [("pvc", *obj_key(event.object))] if event.type != "DELETED" else []

    @staticmethod
    def _volume_key(event: Event):
        return [("pv", "", event.object["metadata"]["name"])] if event.type != "DELETED" else []

    def initial_keys(self):
        return [("pvc", *obj_key(c)) for c in self.cache.list(PVCS)] + \
               [("pv", "", pv["metadata"]["name"]) for pv in self.cache.list(PVS)]

    def sync(self, key) -> None:
        kind, ns, name = key
        if kind == "pvc":
            self._provision(ns, name)
        else:
            self._reclaim(name)

    def _provision(self, ns: str, name: str) -> None:
        pvc = self.cache.get(PVCS, ns, name)
        if pvc is None or pvc["metadata"].get("deletionTimestamp") or pvc["spec"].get("volumeName"):
            return
        annotations = pvc["metadata"].get("annotations") or {}
        provisioner = annotations.get(PROVISIONER_ANNOTATION)
        if provisioner not in self.provisioners:
            return
        sc = self.cache.get(STORAGECLASSES, None, pvc["spec"].get("storageClassName") or "")
        if sc is None:
            return   # persistentvolume-controller reports a missing class
        node = annotations.get(SELECTED_NODE)
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and not node:
            return   # kube-scheduler selects the node first
        if self.cache.get(PVS, None, f"pvc-{pvc['metadata']['uid']}") is not None:
            return
        self.events.normal(pvc, "Provisioning", f'External provisioner is provisioning volume for claim "{ns}/{name}"',
                           provisioner)
        pv = self.store.create(PVS, provisioned_volume(pvc, sc, node, self._volumes_dir))
        self.events.normal(pvc, "ProvisioningSucceeded", f"Successfully provisioned volume {pv['metadata']['name']}",
                           provisioner)

    def _reclaim(self, name: str) -> None:
        pv = self.cache.get(PVS, None, name)
        if pv is None or (pv["metadata"].get("annotations") or {}).get(PROVISIONED_BY) not in self.provisioners:
            return
        if (pv.get("status") or {}).get("phase") != "Released" \
                or pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = (pv["metadata"].get("annotations") or {}).get(HOST_PATH)
        self.store.delete(PVS, None, name, preconditions={"uid": pv["metadata"]["uid"]})
        if path and os.path.dirname(path) == self._volumes_dir:
            shutil.rmtree(path, ignore_errors=True)
