"""The move engine: every change of where a release runs goes plan -> lock -> move -> verify -> commit, or rollback.

``migrate_app``, ``node_maintenance`` (for the releases this package deployed) and ``deploy_app`` on an existing
release all call these functions, so they share one safety net:

* **plan** (reads only): the manifests are rendered once, with the target, and every check (nodes, room, volumes,
  source vs target, what a re-deploy may change) runs against exactly those manifests; the move applies them.
* **lock**: the release's Lease (``k8smove.lock``), held by the DAG run; the record on it keeps the prior state,
  so a retry of the same run, or whoever takes over an expired lock, can finish or undo the move.
* **move**: server-side apply of the manifests, except the release record (recorded values), written at commit.
* **commit**, after the rollout: nothing left on the source nodes, the Service answering, then the recorded
  values and the lock's release. **rollback**: the prior state from the lock's record, re-applied.
"""
from __future__ import annotations

import json
import logging
import time

from kubernetes.client import ApiClient

from k8smove import COMPONENTS, LABEL_COMPONENT, K8sMoveError, kube, lock, release_selector
from k8smove.apply import apply_manifests, record_prior_state, refusals_on_server, restore_prior_state
from k8smove.labels import selector_string
from k8smove.preflight import check_external_ip, check_placement, recorded_release
from k8smove.render import render_manifests
from k8smove.rollout import workloads_in
from k8smove.verify import verify_endpoint, verify_source_empty

log = logging.getLogger(__name__)

# Values a re-deploy cannot change on a running release, and why.
FIXED_ON_REDEPLOY = {
    "external_ip": "the Service's address: every connected client would lose it",
    "port": "the Service's port: every connected client would lose it",
    "storage": "the DB volume's class and size are fixed once it is created",
}
ENDPOINT_DEADLINE_SECONDS = 30


def release_ref(namespace: str, release: str) -> str:
    return f"{namespace}/{release}"


def is_release_record(manifest: dict) -> bool:
    return manifest["kind"] == "ConfigMap" and manifest["metadata"]["name"].endswith("-k8smove")


def _redeploy_problems(recorded: dict, settings: dict) -> list[str]:
    return [f"{key}: {json.dumps(settings.get(key))} differs from the release's {json.dumps(recorded.get(key))} "
            f"({why}); deploy a new release instead"
            for key, why in FIXED_ON_REDEPLOY.items() if key in recorded and settings.get(key) != recorded[key]]


def plan_release(api: ApiClient, namespace: str, release: str, target: dict, components=COMPONENTS,
                 settings: dict | None = None, label_nodes: dict | None = None, avoid_nodes=(),
                 snapshot: tuple[list, list] | None = None) -> dict:
    """What a move of one release does, checked against the cluster; raises K8sMoveError naming the problem.

    ``settings`` (deploy_app): the values besides placement; the release may not exist yet. Without them
    (migrate_app, maintenance) the release's recorded values are used. ``avoid_nodes``: nodes no pod may go to.
    ``snapshot``: (nodes, pods) the caller listed already (see ``check_placement``).
    """
    components = list(components)
    if settings is not None and "external_ip" in settings:
        check_external_ip(settings["external_ip"])
    found = recorded_release(api, namespace, release, components, required=settings is None)
    recorded, sources = found if found else (None, {})
    if settings is not None and recorded is not None:
        if problems := _redeploy_problems(recorded, settings):
            raise K8sMoveError(f"release {release_ref(namespace, release)} exists: " + "; ".join(problems))
    values = {**(recorded or {}), **(settings or {}), "namespace": namespace, "release": release,
              "node_label": target}
    manifests = render_manifests(values, components)
    target_nodes = check_placement(api, manifests, values, sources, label_nodes or {}, avoid_nodes, snapshot)
    # the API server's own verdict (validation, admission, a missing namespace) before anything is written
    if refused := refusals_on_server(api, manifests):
        raise K8sMoveError("the API server refuses the release's manifests: " + "; ".join(refused))
    return {"namespace": namespace, "release": release, "target": target, "components": components,
            "values": values, "sources": sources, "existing": recorded is not None, "target_nodes": target_nodes,
            "avoid_nodes": sorted(avoid_nodes), "manifests": manifests,
            "service_url": f"http://{values['external_ip']}:{values['port']}/"}


def describe(plan: dict) -> str:
    where = ", ".join(f"{c} on {selector_string(s)}" for c, s in sorted(plan["sources"].items())) or "not deployed"
    return (f"release {release_ref(plan['namespace'], plan['release'])}: {where} -> "
            f"{selector_string(plan['target'])} ({', '.join(plan['target_nodes'])})")


def wait_group(plan: dict, workloads: list[dict] | None = None) -> dict:
    """What the rollout wait watches for a release: its namespace, its label selector, its workloads."""
    workloads = workloads if workloads is not None else workloads_in(plan["manifests"])
    return {"namespace": plan["namespace"], "release": plan["release"],
            "workloads": [{**w, "avoid_nodes": plan.get("avoid_nodes", [])} for w in workloads]}


def _current_sources(api: ApiClient, plan: dict) -> dict:
    workloads = kube.list_objects(api, "apps/v1", "Deployment", plan["namespace"], release_selector(plan["release"]))
    return {w["metadata"]["labels"].get(LABEL_COMPONENT): w["spec"]["template"]["spec"].get("nodeSelector") or {}
            for w in workloads if w["metadata"]["labels"].get(LABEL_COMPONENT) in plan["components"]}


def _check_unchanged_since_plan(api: ApiClient, plan: dict) -> None:
    """The release must still be where the plan found it (or already where it goes: a retried move)."""
    now = _current_sources(api, plan)
    moved_already = {c: plan["target"] for c in now}
    if now != plan["sources"] and now != moved_already:
        raise K8sMoveError(f"release {release_ref(plan['namespace'], plan['release'])} changed since it was "
                           f"planned (placement then {plan['sources'] or 'none'}, now {now or 'none'}); run again")


def lease_seconds(timeout_seconds: int) -> int:
    return int(timeout_seconds) + lock.LEASE_MARGIN_SECONDS


def begin(api: ApiClient, plan: dict, holder: str, timeout_seconds: int, on_secret=lambda value: None) -> dict:
    """Lock the release, record its prior state on the lock, apply the manifests (not the recorded values).

    Safe to run again for the same holder: the prior state recorded first is kept, the apply changes nothing.
    Returns {"applied": [{object, result}], "recovered": [...]} (recovered: an expired holder's move undone).
    """
    namespace, release = plan["namespace"], plan["release"]
    duration = lease_seconds(timeout_seconds)
    lease, orphan = lock.acquire(api, namespace, release, holder, duration)
    recovered = []
    if orphan:
        log.warning("release %s: %s left a move unfinished; restoring the state before it",
                    release_ref(namespace, release), orphan.get("holder"))
        recovered = restore_prior_state(api, orphan["prior_state"])
    record = lock.record_of(lease)
    if record.get("holder") != holder or "prior_state" not in record:
        _check_unchanged_since_plan(api, plan)
        record = {"holder": holder, "phase": "applying", "target": plan["target"], "started": time.time(),
                  "prior_state": record_prior_state(api, plan["manifests"])}
        lease = lock.renew(api, lease, duration, record)
    applied = apply_manifests(api, [m for m in plan["manifests"] if not is_release_record(m)], on_secret=on_secret)
    lock.renew(api, lease, duration, {**record, "phase": "applied"})
    return {"applied": applied, "recovered": recovered}


def commit(api: ApiClient, plan: dict, holder: str) -> dict:
    """After the rollout: prove the move, then record the values and let the release go."""
    if plan["sources"]:
        verify_source_empty(api, plan["namespace"], plan["release"], plan["sources"], plan["target"])
    answer = verify_endpoint(plan["service_url"], deadline_seconds=ENDPOINT_DEADLINE_SECONDS)
    recorded = apply_manifests(api, [m for m in plan["manifests"] if is_release_record(m)])
    lock.release_lock(api, plan["namespace"], plan["release"], holder)
    return {"endpoint": answer, "recorded": recorded}


def roll_back(api: ApiClient, namespace: str, release: str, holder: str) -> dict | None:
    """Restore the prior state this holder recorded; None when it holds no move of the release (nothing to undo).

    Returns {"restored": [...], "workloads": the restored workloads to wait for}.
    """
    lease = lock.current(api, namespace, release)
    if lease is None or lease["spec"].get("holderIdentity") != holder:
        return None
    record = lock.record_of(lease)
    if "prior_state" not in record:
        lock.release_lock(api, namespace, release, holder)   # locked, nothing written yet
        return {"restored": [], "workloads": []}
    restored = restore_prior_state(api, record["prior_state"])
    lock.renew(api, lease, lease["spec"]["leaseDurationSeconds"], {**record, "phase": "rolling_back"})
    return {"restored": restored,
            "workloads": workloads_in([e["object"] for e in record["prior_state"] if "object" in e])}


def finish_rollback(api: ApiClient, namespace: str, release: str, holder: str) -> None:
    lock.release_lock(api, namespace, release, holder)
