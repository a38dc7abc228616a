"""Pod predicates the controllers share (the upstream podutil helpers)."""
from __future__ import annotations

import functools
import time

from ..store import copy_json, now_rfc3339, parse_rfc3339

# Timestamps repeat across pods and syncs; strptime is slow enough to show in profiles.
parse_time = functools.lru_cache(maxsize=8192)(parse_rfc3339)


def condition(obj: dict, type_: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return c
    return None


def is_ready(pod: dict) -> bool:
    c = condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def is_terminating(pod: dict) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def is_finished(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_active(pod: dict) -> bool:
    """Counts towards a controller's replicas: not finished and not being deleted."""
    return not is_finished(pod) and not is_terminating(pod)


def ready_since(pod: dict) -> float | None:
    c = condition(pod, "Ready")
    if c is None or c.get("status") != "True":
        return None
    return parse_time(c["lastTransitionTime"]) if c.get("lastTransitionTime") else 0.0


def is_available(pod: dict, min_ready_seconds: int, now: float | None = None) -> bool:
    since = ready_since(pod)
    if since is None:
        return False
    return min_ready_seconds <= 0 or since + min_ready_seconds <= (now or time.time())


def seconds_until_available(pod: dict, min_ready_seconds: int) -> float | None:
    """For ready pods still inside minReadySeconds: when to look again."""
    since = ready_since(pod)
    if since is None or min_ready_seconds <= 0:
        return None
    left = since + min_ready_seconds - time.time()
    return left + 0.05 if left > 0 else None


def set_condition(status: dict, type_: str, value: str, reason: str | None = None,
                  message: str | None = None, stamp: str | None = None, probe_time: bool = False) -> bool:
    """Set a condition, keeping lastTransitionTime unless the status flips; True when something changed."""
    conditions = status.setdefault("conditions", [])
    for c in conditions:
        if c.get("type") == type_:
            changed = c.get("status") != value
            if not changed and c.get("reason") == reason and c.get("message") == message:
                return False
            c["status"] = value
            if changed:
                c["lastTransitionTime"] = stamp or now_rfc3339()
            _set_optional(c, reason, message)
            return True
    c = {"type": type_, "status": value, "lastProbeTime": None, "lastTransitionTime": stamp or now_rfc3339()}
    if not probe_time:
        c.pop("lastProbeTime")
    _set_optional(c, reason, message)
    conditions.append(c)
    return True


def _set_optional(c: dict, reason: str | None, message: str | None) -> None:
    for field, value in (("reason", reason), ("message", message)):
        if value:
            c[field] = value
        else:
            c.pop(field, None)


def pod_from_template(template: dict, namespace: str, owner_ref: dict, name: str | None = None,
                      generate_name: str | None = None, extra_labels: dict | None = None) -> dict:
    """A pod as a workload controller creates it, with the defaults the apiserver would fill in."""
    meta = copy_json(template.get("metadata") or {})
    spec = copy_json(template.get("spec") or {})
    pod_meta = {"namespace": namespace, "labels": dict(meta.get("labels") or {}, **(extra_labels or {})),
                "ownerReferences": [owner_ref]}
    if meta.get("annotations"):
        pod_meta["annotations"] = meta["annotations"]
    if name:
        pod_meta["name"] = name
    else:
        pod_meta["generateName"] = generate_name
    for key, value in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", 30),
                       ("dnsPolicy", "ClusterFirst"), ("schedulerName", "default-scheduler"),
                       ("securityContext", {}), ("enableServiceLinks", True)):
        spec.setdefault(key, value)
    for container in spec.get("containers") or ():
        container.setdefault("imagePullPolicy", "Always" if str(container.get("image", "")).endswith(":latest")
                             or ":" not in str(container.get("image", "")).rsplit("/", 1)[-1] else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec,
            "status": {"phase": "Pending"}}
