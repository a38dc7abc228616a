"""meta.k8s.io/v1 Table output (what kubectl get prints): the upstream printer columns as data."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Callable



@lru_cache(maxsize=65_536)  # parsing is most of the cost of a 2,000-row table
def _epoch_seconds(timestamp: str) -> float | None:
    """RFC 3339 in any form clients write (Z or offset, fractions), None when it is not one."""
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


@dataclass(frozen=True)
class Column:
    name: str
    cell: Callable[[dict], object]
    priority: int = 0        # 1: only with -o wide
    type: str = "string"
    format: str = ""


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest = days // 365, days % 365
    return f"{years}y{rest}d" if days < 365 * 8 and rest else f"{years}y"


def _since(timestamp: str | None) -> str:
    seconds = _epoch_seconds(timestamp) if isinstance(timestamp, str) else None
    return "<unknown>" if seconds is None else human_duration(time.time() - seconds)


def _get(obj, path: str, default=None):
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return default if obj is None else obj


def _none(value) -> str:
    return str(value) if value not in (None, "", []) else "<none>"


def _age(obj: dict) -> str:
    return _since(obj["metadata"].get("creationTimestamp"))


def _name(obj: dict) -> str:
    return obj["metadata"]["name"]


# ---- pods (k8s.io/kubernetes/pkg/printers/internalversion printPod) ----------------------------------
def _pod_status(pod: dict) -> str:
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Pending"
    init_statuses = status.get("initContainerStatuses") or []
    for i, cs in enumerate(init_statuses):
        state = cs.get("state") or {}
        if (state.get("terminated") or {}).get("exitCode") == 0:
            continue
        if state.get("terminated"):
            reason = "Init:" + (state["terminated"].get("reason") or f"ExitCode:{state['terminated'].get('exitCode')}")
        elif (state.get("waiting") or {}).get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + state["waiting"]["reason"]
        else:
            reason = f"Init:{i}/{len(_get(pod, 'spec.initContainers', []))}"
        break
    else:
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            state = cs.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif (state.get("terminated") or {}).get("reason"):
                reason = state["terminated"]["reason"]
            elif state.get("terminated"):
                reason = (f"Signal:{state['terminated']['signal']}" if state["terminated"].get("signal")
                          else f"ExitCode:{state['terminated'].get('exitCode')}")
            elif state.get("running") and cs.get("ready"):
                has_running = True
        if reason == "Completed" and has_running:
            reason = "Running" if _condition(pod, "Ready") == "True" else "NotReady"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return reason


def _condition(obj: dict, kind: str) -> str | None:
    return next((c.get("status") for c in _get(obj, "status.conditions", []) if c.get("type") == kind), None)


def _pod_ready(pod: dict) -> str:
    statuses = _get(pod, "status.containerStatuses", [])
    ready = sum(1 for cs in statuses if cs.get("ready"))
    return f"{ready}/{len(_get(pod, 'spec.containers', []))}"


def _pod_restarts(pod: dict) -> str:
    statuses = _get(pod, "status.containerStatuses", [])
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    last = max((_get(cs, "lastState.terminated.finishedAt") or "" for cs in statuses), default="")
    return f"{restarts} ({_since(last)} ago)" if restarts and last else str(restarts)


def _readiness_gates(pod: dict) -> str:
    gates = _get(pod, "spec.readinessGates", [])
    if not gates:
        return "<none>"
    ready = sum(1 for g in gates if _condition(pod, g.get("conditionType")) == "True")
    return f"{ready}/{len(gates)}"


# ---- nodes ------------------------------------------------------------------------------------------
def _node_status(node: dict) -> str:
    ready = _condition(node, "Ready")
    # upstream printNode: any Ready status but True (False or Unknown) is NotReady; no condition at all Unknown
    status = ["Ready" if ready == "True" else "Unknown" if ready is None else "NotReady"]
    if _get(node, "spec.unschedulable"):
        status.append("SchedulingDisabled")
    return ",".join(status)


def _node_roles(node: dict) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix):] for k in node["metadata"].get("labels") or {} if k.startswith(prefix))
    roles += sorted(v for k, v in (node["metadata"].get("labels") or {}).items() if k == "kubernetes.io/role")
    return ",".join(roles) or "<none>"


def _node_address(kind: str) -> Callable[[dict], str]:
    return lambda node: next((a["address"] for a in _get(node, "status.addresses", []) if a.get("type") == kind),
                             "<none>")


# ---- workloads and the rest --------------------------------------------------------------------------
def _containers(obj: dict) -> str:
    return ",".join(c.get("name", "") for c in _get(obj, "spec.template.spec.containers", []))


def _images(obj: dict) -> str:
    return ",".join(c.get("image", "") for c in _get(obj, "spec.template.spec.containers", []))


def _selector(obj: dict) -> str:
    selector = _get(obj, "spec.selector", {})
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op = expr.get("operator")
        values = ",".join(expr.get("values") or [])
        terms.append({"In": f"{expr['key']} in ({values})", "NotIn": f"{expr['key']} notin ({values})",
                      "Exists": expr["key"], "DoesNotExist": f"!{expr['key']}"}.get(op, ""))
    return ",".join(terms) or "<none>"


def _service_external_ip(svc: dict) -> str:
    spec = svc.get("spec") or {}
    external = list(spec.get("externalIPs") or [])
    if spec.get("type") == "LoadBalancer":
        ingress = [i.get("ip") or i.get("hostname") for i in _get(svc, "status.loadBalancer.ingress", [])]
        external = ingress + external
        return ",".join(external) if external else "<pending>"
    if spec.get("type") == "ExternalName":
        return spec.get("externalName", "<none>")
    return ",".join(external) or "<none>"


def _service_ports(svc: dict) -> str:
    ports = []
    for p in _get(svc, "spec.ports", []):
        node_port = f":{p['nodePort']}" if p.get("nodePort") else ""
        ports.append(f"{p.get('port')}{node_port}/{p.get('protocol', 'TCP')}")
    return ",".join(ports) or "<none>"


def _endpoints(ep: dict) -> str:
    addresses = []
    for subset in ep.get("subsets") or []:
        for port in subset.get("ports") or [{}]:
            for address in subset.get("addresses") or []:
                addresses.append(f"{address.get('ip')}:{port['port']}" if port.get("port") else address.get("ip"))
    if not addresses:
        return "<none>"
    more = f" + {len(addresses) - 3} more..." if len(addresses) > 3 else ""
    return ",".join(addresses[:3]) + more


ACCESS_MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}


def _access_modes(path: str) -> Callable[[dict], str]:
    return lambda obj: ",".join(ACCESS_MODES.get(m, m) for m in _get(obj, path, []))


def _event_object(ev: dict) -> str:
    involved = ev.get("involvedObject") or ev.get("regarding") or {}
    return f"{(involved.get('kind') or '').lower()}/{involved.get('name', '')}"


def _event_last_seen(ev: dict) -> str:
    last = ev.get("lastTimestamp") or ev.get("eventTime") or _get(ev, "series.lastObservedTime") \
        or ev["metadata"].get("creationTimestamp")
    return _since(last)


def _pdb_field(path: str) -> Callable[[dict], str]:
    return lambda pdb: "N/A" if _get(pdb, path) is None else str(_get(pdb, path))


NAME = Column("Name", _name, format="name")
AGE = Column("Age", _age)

COLUMNS: dict[str, tuple[Column, ...]] = {
    "pods": (NAME, Column("Ready", _pod_ready), Column("Status", _pod_status),
             Column("Restarts", _pod_restarts), AGE,
             Column("IP", lambda p: _none(_get(p, "status.podIP")), 1),
             Column("Node", lambda p: _none(_get(p, "spec.nodeName")), 1),
             Column("Nominated Node", lambda p: _none(_get(p, "status.nominatedNodeName")), 1),
             Column("Readiness Gates", _readiness_gates, 1)),
    "nodes": (NAME, Column("Status", _node_status), Column("Roles", _node_roles), AGE,
              Column("Version", lambda n: _get(n, "status.nodeInfo.kubeletVersion", "")),
              Column("Internal-IP", _node_address("InternalIP"), 1),
              Column("External-IP", _node_address("ExternalIP"), 1),
              Column("OS-Image", lambda n: _get(n, "status.nodeInfo.osImage", "<unknown>"), 1),
              Column("Kernel-Version", lambda n: _get(n, "status.nodeInfo.kernelVersion", "<unknown>"), 1),
              Column("Container-Runtime", lambda n: _get(n, "status.nodeInfo.containerRuntimeVersion",
                                                         "<unknown>"), 1)),
    "apps/deployments": (NAME, Column("Ready", lambda d: f"{_get(d, 'status.readyReplicas', 0)}/"
                                                         f"{_get(d, 'spec.replicas', 0)}"),
                         Column("Up-to-date", lambda d: _get(d, "status.updatedReplicas", 0), type="integer"),
                         Column("Available", lambda d: _get(d, "status.availableReplicas", 0), type="integer"),
                         AGE, Column("Containers", _containers, 1), Column("Images", _images, 1),
                         Column("Selector", _selector, 1)),
    "apps/replicasets": (NAME, Column("Desired", lambda r: _get(r, "spec.replicas", 0), type="integer"),
                         Column("Current", lambda r: _get(r, "status.replicas", 0), type="integer"),
                         Column("Ready", lambda r: _get(r, "status.readyReplicas", 0), type="integer"),
                         AGE, Column("Containers", _containers, 1), Column("Images", _images, 1),
                         Column("Selector", _selector, 1)),
    "apps/statefulsets": (NAME, Column("Ready", lambda s: f"{_get(s, 'status.readyReplicas', 0)}/"
                                                          f"{_get(s, 'spec.replicas', 0)}"),
                          AGE, Column("Containers", _containers, 1), Column("Images", _images, 1)),
    "apps/daemonsets": (NAME, Column("Desired", lambda d: _get(d, "status.desiredNumberScheduled", 0), type="integer"),
                        Column("Current", lambda d: _get(d, "status.currentNumberScheduled", 0), type="integer"),
                        Column("Ready", lambda d: _get(d, "status.numberReady", 0), type="integer"),
                        Column("Up-to-date", lambda d: _get(d, "status.updatedNumberScheduled", 0), type="integer"),
                        Column("Available", lambda d: _get(d, "status.numberAvailable", 0), type="integer"),
                        Column("Node Selector", lambda d: ",".join(
                            f"{k}={v}" for k, v in _get(d, "spec.template.spec.nodeSelector", {}).items())
                            or "<none>"),
                        AGE, Column("Containers", _containers, 1), Column("Images", _images, 1),
                        Column("Selector", _selector, 1)),
    "services": (NAME, Column("Type", lambda s: _get(s, "spec.type", "ClusterIP")),
                 Column("Cluster-IP", lambda s: _none(_get(s, "spec.clusterIP"))),
                 Column("External-IP", _service_external_ip), Column("Port(s)", _service_ports), AGE,
                 Column("Selector", lambda s: ",".join(f"{k}={v}" for k, v in _get(s, "spec.selector", {}).items())
                        or "<none>", 1)),
    "endpoints": (NAME, Column("Endpoints", _endpoints), AGE),
    "persistentvolumeclaims": (NAME, Column("Status", lambda c: _get(c, "status.phase", "")),
                               Column("Volume", lambda c: _get(c, "spec.volumeName", "")),
                               Column("Capacity", lambda c: _get(c, "status.capacity.storage", "")),
                               Column("Access Modes", _access_modes("status.accessModes")),
                               Column("StorageClass", lambda c: _get(c, "spec.storageClassName", "<unset>")),
                               Column("VolumeAttributesClass",
                                      lambda c: _get(c, "spec.volumeAttributesClassName", "<unset>")),
                               AGE, Column("VolumeMode", lambda c: _get(c, "spec.volumeMode", ""), 1)),
    "persistentvolumes": (NAME, Column("Capacity", lambda v: _get(v, "spec.capacity.storage", "")),
                          Column("Access Modes", _access_modes("spec.accessModes")),
                          Column("Reclaim Policy", lambda v: _get(v, "spec.persistentVolumeReclaimPolicy", "")),
                          Column("Status", lambda v: _get(v, "status.phase", "")),
                          Column("Claim", lambda v: f"{_get(v, 'spec.claimRef.namespace')}/"
                                                    f"{_get(v, 'spec.claimRef.name')}" if _get(v, "spec.claimRef")
                                 else ""),
                          Column("StorageClass", lambda v: _get(v, "spec.storageClassName", "")),
                          Column("VolumeAttributesClass",
                                 lambda v: _get(v, "spec.volumeAttributesClassName", "<unset>")),
                          Column("Reason", lambda v: _get(v, "status.reason", "")), AGE,
                          Column("VolumeMode", lambda v: _get(v, "spec.volumeMode", ""), 1)),
    "events": (Column("Last Seen", _event_last_seen), Column("Type", lambda e: e.get("type", "")),
               Column("Reason", lambda e: e.get("reason", "")), Column("Object", _event_object),
               Column("Message", lambda e: (e.get("message") or e.get("note") or "").strip())),
    "policy/poddisruptionbudgets": (NAME, Column("Min Available", _pdb_field("spec.minAvailable")),
                                    Column("Max Unavailable", _pdb_field("spec.maxUnavailable")),
                                    Column("Allowed Disruptions", lambda p: _get(p, "status.disruptionsAllowed", 0),
                                           type="integer"), AGE),
    "namespaces": (NAME, Column("Status", lambda n: _get(n, "status.phase", "")), AGE),
    "configmaps": (NAME, Column("Data", lambda c: len(c.get("data") or {}) + len(c.get("binaryData") or {}),
                                type="integer"), AGE),
    "secrets": (NAME, Column("Type", lambda s: s.get("type", "")),
                Column("Data", lambda s: len(s.get("data") or {}), type="integer"), AGE),
    "serviceaccounts": (NAME, Column("Secrets", lambda s: len(s.get("secrets") or []), type="integer"), AGE),
    "coordination.k8s.io/leases": (NAME, Column("Holder", lambda l: _get(l, "spec.holderIdentity", "")), AGE),
    "storage.k8s.io/storageclasses": (
        NAME, Column("Provisioner", lambda s: s.get("provisioner", "")),
        Column("ReclaimPolicy", lambda s: s.get("reclaimPolicy", "Delete")),
        Column("VolumeBindingMode", lambda s: s.get("volumeBindingMode", "Immediate")),
        Column("AllowVolumeExpansion", lambda s: str(bool(s.get("allowVolumeExpansion"))).lower(), type="boolean"),
        AGE),
}
COLUMNS["events.k8s.io/events"] = COLUMNS["events"]
DEFAULT_COLUMNS = (NAME, AGE)

DESCRIPTIONS = {"Name": "Name must be unique within a namespace. Is required when creating resources, although "
                        "some resources may allow a client to request the generation of an appropriate name "
                        "automatically. Name is primarily intended for creation idempotence and configuration "
                        "definition. Cannot be updated.",
                "Age": "CreationTimestamp is a timestamp representing the server time when this object was "
                       "created."}


def _cell(column: Column, obj: dict):
    try:
        return column.cell(obj)
    except (AttributeError, KeyError, TypeError, ValueError):  # odd data (null list items) must not fail a list
        return "<unknown>"


def _row_object(obj: dict, include: str) -> dict | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(resource_key: str, objs: list[dict], list_meta: dict, include_object: str | None) -> dict:
    columns = COLUMNS.get(resource_key, DEFAULT_COLUMNS)
    include = include_object or "Metadata"
    rows = []
    for obj in objs:
        row = {"cells": [_cell(col, obj) for col in columns]}
        row_object = _row_object(obj, include)
        if row_object is not None:
            row["object"] = row_object
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": [{"name": c.name, "type": c.type, "format": c.format,
                                   "description": DESCRIPTIONS.get(c.name, c.name), "priority": c.priority}
                                  for c in columns],
            "rows": rows}
