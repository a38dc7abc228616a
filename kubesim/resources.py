"""The resource types kubesim serves, as data: the one table discovery, routing and the store read."""
from __future__ import annotations

from dataclasses import dataclass

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str            # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()   # e.g. ("status", "scale")
    categories: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Storage key: "pods", "apps/deployments"."""
        return f"{self.group}/{self.plural}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def group_version(self) -> str:
        return self.api_version


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False, ("ns",),
                 ("create", "delete", "get", "list", "patch", "update", "watch"), ("status", "finalize")),
    ResourceType("", "v1", "Node", "nodes", False, ("no",), subresources=("status",)),
    ResourceType("", "v1", "Pod", "pods", True, ("po",),
                 subresources=("status", "eviction", "binding", "log", "exec", "attach", "portforward"), categories=("all",)),
    ResourceType("", "v1", "Service", "services", True, ("svc",),
                 ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"),
                 ("status",), ("all",)),
    ResourceType("", "v1", "Endpoints", "endpoints", True, ("ep",)),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",)),
    ResourceType("", "v1", "Secret", "secrets", True),
    ResourceType("", "v1", "Event", "events", True, ("ev",)),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",)),
    ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",),
                 subresources=("status",)),
    ResourceType("", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",), subresources=("status",)),
    ResourceType("apps", "v1", "Deployment", "deployments", True, ("deploy",),
                 subresources=("status", "scale"), categories=("all",)),
    ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, ("rs",),
                 subresources=("status", "scale"), categories=("all",)),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", True, ("sts",),
                 subresources=("status", "scale"), categories=("all",)),
    ResourceType("apps", "v1", "ControllerRevision", "controllerrevisions", True),
    ResourceType("apps", "v1", "DaemonSet", "daemonsets", True, ("ds",),
                 subresources=("status",), categories=("all",)),
    ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, ("pdb",),
                 subresources=("status",)),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True),
    ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True),
    ResourceType("storage.k8s.io", "v1", "StorageClass", "storageclasses", False, ("sc",)),
    ResourceType("events.k8s.io", "v1", "Event", "events", True, ("ev",)),
)

BY_KEY: dict[str, ResourceType] = {r.key: r for r in RESOURCE_TYPES}


def by_group_version(group: str, version: str) -> dict[str, ResourceType]:
    return {r.plural: r for r in RESOURCE_TYPES if r.group == group and r.version == version}


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    for r in RESOURCE_TYPES:
        if r.api_version == api_version and r.kind == kind:
            return r
    return None


def groups() -> dict[str, list[str]]:
    """Non-core API groups and their versions, in discovery order."""
    out: dict[str, list[str]] = {}
    for r in RESOURCE_TYPES:
        if r.group and r.version not in out.setdefault(r.group, []):
            out[r.group].append(r.version)
    return out


PODS = BY_KEY["pods"]
NODES = BY_KEY["nodes"]
NAMESPACES = BY_KEY["namespaces"]
SERVICES = BY_KEY["services"]
ENDPOINTS = BY_KEY["endpoints"]
CONFIGMAPS = BY_KEY["configmaps"]
SECRETS = BY_KEY["secrets"]
EVENTS = BY_KEY["events"]
SERVICEACCOUNTS = BY_KEY["serviceaccounts"]
PVCS = BY_KEY["persistentvolumeclaims"]
PVS = BY_KEY["persistentvolumes"]
DEPLOYMENTS = BY_KEY["apps/deployments"]
REPLICASETS = BY_KEY["apps/replicasets"]
STATEFULSETS = BY_KEY["apps/statefulsets"]
CONTROLLERREVISIONS = BY_KEY["apps/controllerrevisions"]
DAEMONSETS = BY_KEY["apps/daemonsets"]
PDBS = BY_KEY["policy/poddisruptionbudgets"]
LEASES = BY_KEY["coordination.k8s.io/leases"]
ENDPOINTSLICES = BY_KEY["discovery.k8s.io/endpointslices"]
STORAGECLASSES = BY_KEY["storage.k8s.io/storageclasses"]
EVENTS_V1 = BY_KEY["events.k8s.io/events"]
