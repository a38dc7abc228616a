"""Defaulting as the real apiserver does it for the fields clients read, as (path, value) tables.

A path is dotted; "[*]" walks every existing list item. A constant value is set when the field is
missing; a callable receives the current value (MISSING when absent) and returns the new one.
"""
from __future__ import annotations

import base64

from typing import Any, Callable

MISSING = object()


def _pull_policy_for(container: dict) -> str:
    image = container.get("image") or ""
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
    return "Always" if latest else "IfNotPresent"


def _rolling_update(max_unavailable, max_surge) -> Callable[[Any], dict]:
    def default(strategy):
        strategy = {} if strategy is MISSING else strategy
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", max_unavailable)
            if max_surge is not None:
                rolling.setdefault("maxSurge", max_surge)
        return strategy
    return default


def _statefulset_update_strategy(strategy):
    strategy = {} if strategy is MISSING else strategy
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    return strategy


CONTAINER_DEFAULTS = (
    ("terminationMessagePath", "/dev/termination-log"),
    ("terminationMessagePolicy", "File"),
    ("resources", {}),
    ("ports[*].protocol", "TCP"),
)

POD_SPEC_DEFAULTS = (
    ("restartPolicy", "Always"),
    ("dnsPolicy", "ClusterFirst"),
    ("terminationGracePeriodSeconds", 30),
    ("schedulerName", "default-scheduler"),
    ("securityContext", {}),
    ("enableServiceLinks", True),
) + tuple((f"{kind}[*].{path}", value) for kind in ("containers", "initContainers")
          for path, value in CONTAINER_DEFAULTS)

# What admission plugins add to pods (ServiceAccount, DefaultTolerationSeconds, Priority).
POD_ADMISSION_DEFAULTS = (
    ("spec.serviceAccountName", "default"),
    ("spec.priority", 0),
    ("spec.preemptionPolicy", "PreemptLowerPriority"),
    ("status.phase", "Pending"),
)


def _under(prefix: str, table) -> tuple:
    return tuple((f"{prefix}.{path}", value) for path, value in table)


TEMPLATE_DEFAULTS = _under("spec.template.spec", POD_SPEC_DEFAULTS)

DEFAULTS: dict[str, tuple] = {
    "pods": _under("spec", POD_SPEC_DEFAULTS),
    "apps/deployments": (
        ("spec.replicas", 1),
        ("spec.strategy", _rolling_update("25%", "25%")),
        ("spec.revisionHistoryLimit", 10),
        ("spec.progressDeadlineSeconds", 600),
    ) + TEMPLATE_DEFAULTS,
    "apps/replicasets": (("spec.replicas", 1),) + TEMPLATE_DEFAULTS,
    "apps/statefulsets": (
        ("spec.replicas", 1),
        ("spec.podManagementPolicy", "OrderedReady"),
        ("spec.updateStrategy", _statefulset_update_strategy),
        ("spec.revisionHistoryLimit", 10),
        ("spec.persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"}),
        ("spec.volumeClaimTemplates[*].spec.volumeMode", "Filesystem"),
    ) + TEMPLATE_DEFAULTS,
    "apps/daemonsets": (
        ("spec.updateStrategy", _rolling_update(1, 0)),
        ("spec.revisionHistoryLimit", 10),
    ) + TEMPLATE_DEFAULTS,
    "services": (
        ("spec.type", "ClusterIP"),
        ("spec.sessionAffinity", "None"),
        ("spec.ports[*].protocol", "TCP"),
        ("spec.internalTrafficPolicy", "Cluster"),
    ),
    "persistentvolumeclaims": (("spec.volumeMode", "Filesystem"), ("status.phase", "Pending")),
    "persistentvolumes": (("spec.persistentVolumeReclaimPolicy", "Retain"), ("spec.volumeMode", "Filesystem"),
                          ("status.phase", "Pending")),
    "secrets": (("type", "Opaque"),),
}


def _apply(node, parts: list[str], value) -> None:
    head, rest = parts[0], parts[1:]
    if head.endswith("[*]"):
        items = node.get(head[:-3]) if isinstance(node, dict) else None
        for item in items or []:
            if isinstance(item, dict) and rest:
                _apply(item, rest, value)
        return
    if not isinstance(node, dict):
        return
    if rest:
        child = node.get(head)
        if child is None:
            child = node[head] = {}
        _apply(child, rest, value)
    elif callable(value):
        node[head] = value(node.get(head, MISSING))
    elif head not in node:
        node[head] = value.copy() if isinstance(value, dict) else value


def _service_defaults(svc: dict) -> None:
    spec = svc.setdefault("spec", {})
    for port in spec.get("ports") or []:
        if isinstance(port, dict) and "port" in port:
            port.setdefault("targetPort", port["port"])
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("ipFamilies", ["IPv4"])


def _qos_class(pod: dict) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    resources = [c.get("resources") or {} for c in containers if isinstance(c, dict)]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(set((r.get("limits") or {})) >= {"cpu", "memory"}
                     and all((r.get("requests") or {}).get(k, v) == v for k, v in r["limits"].items())
                     for r in resources)
    return "Guaranteed" if guaranteed else "Burstable"


def _pod_defaults(pod: dict) -> None:
    for kind in ("containers", "initContainers"):
        for container in (pod.get("spec") or {}).get(kind) or []:
            if isinstance(container, dict):
                container.setdefault("imagePullPolicy", _pull_policy_for(container))
    if pod.get("spec", {}).get("serviceAccountName"):
        pod["spec"].setdefault("serviceAccount", pod["spec"]["serviceAccountName"])
    pod.setdefault("status", {}).setdefault("qosClass", _qos_class(pod))


def _template_defaults(workload: dict) -> None:
    template = (workload.get("spec") or {}).get("template")
    if isinstance(template, dict):
        for container in (template.get("spec") or {}).get("containers") or []:
            if isinstance(container, dict):
                container.setdefault("imagePullPolicy", _pull_policy_for(container))


def _secret_defaults(secret: dict) -> None:
    """stringData is write-only: the server folds it into data (base64) as upstream does."""
    string_data = secret.pop("stringData", None)
    if isinstance(string_data, dict):
        data = secret.get("data") if isinstance(secret.get("data"), dict) else {}
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in string_data.items()})
        secret["data"] = data
    secret.setdefault("type", "Opaque")


# Defaults that depend on several fields at once.
COMPUTED: dict[str, Callable[[dict], None]] = {
    "pods": _pod_defaults,
    "services": _service_defaults,
    "secrets": _secret_defaults,
    "apps/deployments": _template_defaults,
    "apps/replicasets": _template_defaults,
    "apps/statefulsets": _template_defaults,
    "apps/daemonsets": _template_defaults,
}


ADMISSION_DEFAULTS: dict[str, tuple] = {"pods": POD_ADMISSION_DEFAULTS}


def _default_tolerations(seconds: int) -> Callable[[Any], list]:
    """DefaultTolerationSeconds admission: tolerate not-ready/unreachable nodes for a while."""
    def default(tolerations):
        tolerations = [] if tolerations is MISSING or tolerations is None else tolerations
        return tolerations + [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
                              for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
                              if not any(isinstance(t, dict) and t.get("key") == key for t in tolerations)]
    return default


def apply_defaults(resource_key: str, obj: dict, creating: bool, toleration_seconds: int = 300) -> dict:
    """Fill in defaults in place (obj must be a private copy) and return it; admission only on create."""
    table = DEFAULTS.get(resource_key, ())
    if creating:
        table += ADMISSION_DEFAULTS.get(resource_key, ())
        if resource_key == "pods":
            table += (("spec.tolerations", _default_tolerations(toleration_seconds)),)
    for path, value in table:
        _apply(obj, path.split("."), value)
    if resource_key in COMPUTED:
        COMPUTED[resource_key](obj)
    return obj
