"""One lock per release: a ``coordination.k8s.io/v1`` Lease in the release's namespace, visible in the cluster.

The holder is a DAG run (``<dag_id>/<run_id>``): retries of its tasks hold the same lock, another run is refused
with the holder's name. A lease expires ``leaseDurationSeconds`` after its last renewal (the move's own bound
plus a margin), so a run that crashed cannot block a release forever; whoever takes over an expired lease also
gets its record (``k8smove.io/move``: the prior state of an unfinished move) and must finish or undo it first.
Every write is conditional on the resourceVersion read, so two runs racing for one lease cannot both win.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from k8smove import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, K8sMoveError, kube

RECORD_ANNOTATION = "k8smove.io/move"
LEASE_MARGIN_SECONDS = 300   # beyond the move's timeout: a rollback's wait fits before anyone may take over


class LockHeld(K8sMoveError):
    """Another run holds the release's lock."""


def lease_name(release: str) -> str:
    return f"{release}-k8smove-lock"


def _micro_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _identity(namespace: str, release: str) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"namespace": namespace, "name": lease_name(release)}}


def record_of(lease: dict | None) -> dict:
    """The move record kept on the lease ({} when there is none)."""
    annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
    return json.loads(annotations.get(RECORD_ANNOTATION, "{}"))


def expires_at(lease: dict) -> datetime | None:
    spec = lease.get("spec") or {}
    renewed = _parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    if renewed is None or spec.get("leaseDurationSeconds") is None:
        return None
    return datetime.fromtimestamp(renewed.timestamp() + spec["leaseDurationSeconds"], timezone.utc)


def _lease(namespace: str, release: str, holder: str, duration_seconds: int, record: dict,
           now: datetime, acquired: str | None = None, resource_version: str | None = None) -> dict:
    metadata = {"namespace": namespace, "name": lease_name(release),
                "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: release},
                "annotations": {RECORD_ANNOTATION: json.dumps(record, sort_keys=True)}}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": int(duration_seconds),
                     "acquireTime": acquired or _micro_time(now), "renewTime": _micro_time(now)}}


def _held_message(namespace: str, release: str, lease: dict) -> str:
    until = expires_at(lease)
    return (f"release {namespace}/{release} is being moved by {lease['spec'].get('holderIdentity')} "
            f"(Lease {namespace}/{lease_name(release)}"
            + (f", held until {until:%Y-%m-%d %H:%M:%S} UTC" if until else "") +
            "); run again once it has finished")


def acquire(api: ApiClient, namespace: str, release: str, holder: str, duration_seconds: int,
            now: datetime | None = None) -> tuple[dict, dict]:
    """Take (or keep) the release's lock for ``holder``; returns (lease, orphan record).

    The orphan record is what an expired holder left unfinished ({} normally): the caller must undo it.
    Raises LockHeld naming the holder when another run holds an unexpired lock.
    """
    now = now or datetime.now(timezone.utc)
    path = kube.object_path("coordination.k8s.io/v1", "Lease", namespace)
    try:
        created = kube.call(api, "POST", path, _lease(namespace, release, holder, duration_seconds,
                                                      {"holder": holder}, now))
        return created, {}
    except ApiException as err:
        if err.status != 409:
            raise
    lease = kube.get(api, _identity(namespace, release))
    if lease is None:   # released between our create and our read: try once more
        return acquire(api, namespace, release, holder, duration_seconds, now)
    current = lease["spec"].get("holderIdentity")
    record = record_of(lease)
    if current == holder:
        return renew(api, lease, duration_seconds, record, now), {}
    until = expires_at(lease)
    if current and until and until > now:
        raise LockHeld(_held_message(namespace, release, lease))
    # Expired or released without being deleted: take it over, carrying what the last holder left unfinished.
    orphan = record if record.get("prior_state") and record.get("phase") != "committed" else {}
    replacement = _lease(namespace, release, holder, duration_seconds, {"holder": holder, "orphan_of": current},
                         now, resource_version=lease["metadata"]["resourceVersion"])
    try:
        taken = kube.call(api, "PUT", kube.object_path("coordination.k8s.io/v1", "Lease", namespace,
                                                       lease_name(release)), replacement)
    except ApiException as err:
        if err.status == 409:     # someone else took it over first
            raise LockHeld(_held_message(namespace, release, kube.get(api, _identity(namespace, release))
                                         or lease)) from err
        raise
    return taken, orphan


def renew(api: ApiClient, lease: dict, duration_seconds: int, record: dict, now: datetime | None = None) -> dict:
    """Write ``record`` to the lease and push its expiry out; 409 (someone else wrote it) is LockHeld."""
    now = now or datetime.now(timezone.utc)
    meta = lease["metadata"]
    body = _lease(meta["namespace"], meta["labels"][LABEL_INSTANCE], lease["spec"]["holderIdentity"],
                  duration_seconds, record, now, acquired=lease["spec"].get("acquireTime"),
                  resource_version=meta["resourceVersion"])
    try:
        return kube.call(api, "PUT", kube.object_path("coordination.k8s.io/v1", "Lease", meta["namespace"],
                                                      meta["name"]), body)
    except ApiException as err:
        if err.status == 409:
            raise LockHeld(f"the lock of release {meta['namespace']}/{meta['labels'][LABEL_INSTANCE]} changed "
                           f"under {lease['spec']['holderIdentity']}: another run took it over") from err
        raise


def current(api: ApiClient, namespace: str, release: str) -> dict | None:
    return kube.get(api, _identity(namespace, release))


def release_lock(api: ApiClient, namespace: str, release: str, holder: str) -> bool:
    """Delete the lease if ``holder`` still holds it (conditional on its resourceVersion); True when deleted."""
    lease = current(api, namespace, release)
    if lease is None or lease["spec"].get("holderIdentity") != holder:
        return False
    try:
        kube.delete(api, _identity(namespace, release),
                    preconditions={"resourceVersion": lease["metadata"]["resourceVersion"]})
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True
