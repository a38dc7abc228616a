"""Pod volumes as host directories under work_dir, with the attach rules of real block storage.

* emptyDir, configMap, secret, hostPath: directories of the pod (hostPath: of the node), made per pod.
* persistentVolumeClaim: the bound PV's directory (annotation ``kubesim.io/host-path``, else
  ``<work_dir>/volumes/<pv>``). A node-local class (local-path) belongs to one node: a pod on another
  node is refused with kubelet's FailedMount wording. A network class is reachable from every node but
  a ReadWriteOnce volume is attached to one node at a time: another node's pod waits with the
  attach/detach controller's Multi-Attach error until the pods on the first node are gone.
"""
from __future__ import annotations

import base64
import os
import shutil
import threading
from dataclasses import dataclass

from .. import labels, resources
from ..store import Store

HOST_PATH_ANNOTATION = "kubesim.io/host-path"
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
# Storage that stays on the node where it was provisioned, by StorageClass name or provisioner.
NODE_LOCAL_STORAGE = {"local-path", "rancher.io/local-path", "kubernetes.io/no-provisioner"}
# Access modes that allow attachment to a single node only, and the scope they count in.
EXCLUSIVE_ACCESS = {"ReadWriteOnce": "node", "ReadWriteOncePod": "pod"}


@dataclass
class VolumeProblem(Exception):
    """Why a pod's volumes cannot be set up on a node (an Event reason and message), retried later."""
    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Claimed:
    """A PVC-backed volume: which PV, its directory and how it may be attached."""
    pv: str
    host_path: str
    access: str | None          # "node" / "pod" for exclusive modes, None when shared
    owner_node: str | None      # node-local storage: the node owning the data
    affinity: dict | None       # the PV's spec.nodeAffinity.required


class Volumes:
    def __init__(self, store: Store, work_dir: str):
        self._store = store
        self._work_dir = work_dir
        self._lock = threading.Lock()
        self._attached: dict[str, dict[str, tuple[str, str]]] = {}   # pv -> pod uid -> (node, ns/name)
        self._first_node: dict[str, str] = {}                         # node-local PV -> node seen first

    # ---- for the kubelet ------------------------------------------------------------------------
    def attach_problem(self, pod: dict, node: str) -> VolumeProblem | None:
        """None when every volume of the pod can be attached and mounted on node now."""
        try:
            with self._lock:
                for claimed in self._claims(pod).values():
                    self._check(claimed, pod, node)
        except VolumeProblem as problem:
            return problem
        return None

    # ---- for the runtime ------------------------------------------------------------------------
    def pod_dir(self, pod_uid: str) -> str:
        return os.path.join(self._work_dir, "pods", pod_uid)

    def setup(self, pod: dict, node: str) -> dict[str, str]:
        """Attach and make every volume; volume name -> host directory. Raises VolumeProblem."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            claims = self._claims(pod)
            for claimed in claims.values():
                self._check(claimed, pod, node)
            for claimed in claims.values():
                self._attached.setdefault(claimed.pv, {})[uid] = (node, _pod_ref(pod))
                self._first_node.setdefault(claimed.pv, node)
        paths = {}
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            if name in claims:
                paths[name] = claims[name].host_path
            else:
                kind = next((k for k in _MAKERS if k in volume), "emptyDir")
                paths[name] = _MAKERS[kind](self, pod, node, volume)
            os.makedirs(paths[name], exist_ok=True)
        return paths

    def teardown(self, pod_uid: str) -> None:
        """Detach the pod's PVs and delete its own volumes (emptyDir and the like)."""
        with self._lock:
            for pods in self._attached.values():
                pods.pop(pod_uid, None)
        shutil.rmtree(os.path.join(self.pod_dir(pod_uid), "volumes"), ignore_errors=True)

    # ---- internals ------------------------------------------------------------------------------
    def _claims(self, pod: dict) -> dict[str, Claimed]:
        namespace = pod["metadata"]["namespace"]
        out = {}
        for volume in pod["spec"].get("volumes") or []:
            source = volume.get("persistentVolumeClaim")
            if source:
                out[volume["name"]] = self._claimed(namespace, source["claimName"])
        return out

    def _claimed(self, namespace: str, claim_name: str) -> Claimed:
        pvc = self._store.find(resources.PVCS, namespace, claim_name)
        if pvc is None:
            raise VolumeProblem("FailedMount", f'persistentvolumeclaim "{claim_name}" not found')
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        pv = self._store.find(resources.PVS, None, pv_name) if pv_name else None
        if pv is None:
            raise VolumeProblem("FailedMount", f'persistentvolumeclaim "{claim_name}" is not bound')
        spec = pv.get("spec") or {}
        class_name = spec.get("storageClassName") or (pvc.get("spec") or {}).get("storageClassName") or ""
        annotations = pv["metadata"].get("annotations") or {}
        # From the PV alone, as a kubelet knows it (a node may not read StorageClasses).
        provisioner = annotations.get("pv.kubernetes.io/provisioned-by", "")
        node_local = bool({class_name, provisioner} & NODE_LOCAL_STORAGE) or "local" in spec \
            or "hostPath" in spec or "nodeAffinity" in spec
        modes = spec.get("accessModes") or (pvc.get("spec") or {}).get("accessModes") or ["ReadWriteOnce"]
        access = next((EXCLUSIVE_ACCESS[m] for m in modes if m in EXCLUSIVE_ACCESS), None) \
            if len(modes) == 1 else None
        owner = ((pvc["metadata"].get("annotations") or {}).get(SELECTED_NODE_ANNOTATION)
                 or self._first_node.get(pv_name)) if node_local else None
        return Claimed(pv_name, annotations.get(HOST_PATH_ANNOTATION)
                       or os.path.join(self._work_dir, "volumes", pv_name), access, owner,
                       (spec.get("nodeAffinity") or {}).get("required") if node_local else None)

    def _check(self, claimed: Claimed, pod: dict, node: str) -> None:
        if not self._reachable_from(claimed, node):
            raise VolumeProblem("FailedMount", f'MountVolume.NodeAffinity check failed for volume '
                                f'"{claimed.pv}" : no matching NodeSelectorTerms')
        if claimed.access is None:
            return
        uid = pod["metadata"]["uid"]
        holders = [ref for pod_uid, (held_on, ref) in self._attached.get(claimed.pv, {}).items()
                   if pod_uid != uid and (claimed.access == "pod" or held_on != node)]
        if holders:
            raise VolumeProblem("FailedAttachVolume", f'Multi-Attach error for volume "{claimed.pv}" '
                                f'Volume is already used by pod(s) {", ".join(sorted(holders))}')

    def _reachable_from(self, claimed: Claimed, node: str) -> bool:
        """Node-local data is reachable only from its node: by the PV's node affinity, else its owner."""
        if claimed.affinity is None:
            return claimed.owner_node in (None, node)
        node_obj = self._store.find(resources.NODES, None, node)
        node_labels = (node_obj or {}).get("metadata", {}).get("labels") or {"kubernetes.io/hostname": node}
        return any(labels.matches(labels.from_expressions(term.get("matchExpressions")), node_labels)
                   for term in claimed.affinity.get("nodeSelectorTerms") or [])


def _pod_ref(pod: dict) -> str:
    return f'{pod["metadata"]["namespace"]}/{pod["metadata"]["name"]}'


def _own_dir(volumes: Volumes, pod: dict, kind: str, name: str) -> str:
    return os.path.join(volumes.pod_dir(pod["metadata"]["uid"]), "volumes", kind, name)


def _empty_dir(volumes: Volumes, pod: dict, node: str, volume: dict) -> str:
    return _own_dir(volumes, pod, "empty-dir", volume["name"])


def _host_path(volumes: Volumes, pod: dict, node: str, volume: dict) -> str:
    """A hostPath is a directory of the node, not of this machine."""
    return os.path.join(volumes._work_dir, "nodes", node, "host-path", volume["hostPath"]["path"].lstrip("/"))


def _files(volumes: Volumes, pod: dict, node: str, volume: dict) -> str:
    """configMap / secret volumes: one file per key (or per listed item)."""
    kind = "configMap" if "configMap" in volume else "secret"
    source = volume[kind]
    rt, name = (resources.CONFIGMAPS, source.get("name")) if kind == "configMap" else \
        (resources.SECRETS, source.get("secretName"))
    obj = volumes._store.find(rt, pod["metadata"]["namespace"], name) or {}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()} if kind == "configMap" else \
        {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    target = _own_dir(volumes, pod, kind, volume["name"])
    for item in items:
        if item["key"] in data:
            path = os.path.join(target, item["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data[item["key"]])
    return target


# Volume source -> how its directory is made (PVCs are handled above; anything else is an empty dir).
_MAKERS = {"emptyDir": _empty_dir, "hostPath": _host_path, "configMap": _files, "secret": _files}


def mount_table(container: dict, volume_paths: dict[str, str]) -> list[tuple[str, str]]:
    """(container path, host path) for each volumeMount, longest container path first."""
    mounts = [(m["mountPath"].rstrip("/") or "/", os.path.join(volume_paths[m["name"]], m.get("subPath", "")))
              for m in container.get("volumeMounts") or [] if m["name"] in volume_paths]
    return sorted(mounts, key=lambda m: -len(m[0]))


def host_path_of(mounts: list[tuple[str, str]], container_path: str) -> str | None:
    """Where a path inside the container lives on this machine, when a volume holds it."""
    for mount_path, host in mounts:
        if container_path == mount_path or container_path.startswith(mount_path + "/"):
            return os.path.normpath(os.path.join(host, os.path.relpath(container_path, mount_path)))
    return None
