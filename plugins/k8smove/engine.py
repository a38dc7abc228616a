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

from k8smove import COMPONENTS, LABEL_COMPONENT, K8sMoveError, kube, lock, release_selector, switchover
from k8smove.apply import apply_manifests, record_prior_state, refusals_on_server, restore_prior_state
from k8smove.labels import selector_string
from k8smove.preflight import (
    EXTERNAL_IP_RANGES,
    check_db_secret,
    check_external_ip,
    check_placement,
    check_service_address,
    recorded_release,
)
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
# On the release record: the holder whose move it commits, and that move's outcome (JSON), so a try of the same
# run that starts after an earlier try committed (Airflow's stale-event retry) returns it instead of moving again.
ANNOTATION_COMMITTED = "k8smove.io/committed"


def release_ref(namespace: str, release: str) -> str:
    return f"{namespace}/{release}"


def is_release_record(manifest: dict) -> bool:
    return manifest["kind"] == "ConfigMap" and manifest["metadata"]["name"].endswith("-k8smove")


def _redeploy_problems(recorded: dict, settings: dict) -> list[str]:
    return [f"{key}: {json.dumps(settings.get(key))} differs from the release's {json.dumps(recorded.get(key))} "
            f"({why}); deploy a new release instead"
            for key, why in FIXED_ON_REDEPLOY.items() if key in recorded and settings.get(key) != recorded[key]]


def probe_target(plan: dict) -> dict:
    """What start_probe needs to probe a planned move: the release, its external URL, and the nodes its probe
    should avoid (the move's target nodes, which the move loads and which may be the ones that fail)."""
    return {"namespace": plan["namespace"], "release": plan["release"], "url": plan["service_url"],
            "avoid_nodes": sorted(plan["target_nodes"])}


def plan_release(api: ApiClient, namespace: str, release: str, target: dict, components=COMPONENTS,
                 settings: dict | None = None, label_nodes: dict | None = None, avoid_nodes=(),
                 snapshot: tuple[list, list] | None = None, db_strategy: str = "switchover",
                 external_ip_ranges: str = EXTERNAL_IP_RANGES) -> dict:
    """What a move of one release does, checked against the cluster; raises K8sMoveError naming the problem.

    ``target``: the node selector to place the release on; None (deploy_app without node_label) keeps an existing
    release where it runs. ``settings`` (deploy_app): the values besides placement; the release may not exist yet.
    Without them
    (migrate_app, maintenance) the release's recorded values are used. ``avoid_nodes``: nodes no pod may go to.
    ``snapshot``: (nodes, pods) the caller listed already (see ``check_placement``). ``db_strategy``: how a DB
    that changes nodes moves: ``switchover`` (a streaming standby on the target, then promoted; k8smove.switchover)
    or ``recreate`` (stopped, then started on the target with its volume). ``external_ip_ranges``: where, besides
    the nodes' own addresses, a new release's external_ip may be (``preflight.check_cluster_address``).
    """
    if db_strategy not in switchover.STRATEGIES:
        raise K8sMoveError(f"db_strategy: {json.dumps(db_strategy)} is not one of {', '.join(switchover.STRATEGIES)}")
    components = list(components)
    if settings is not None and "external_ip" in settings:
        check_external_ip(settings["external_ip"])
    found = recorded_release(api, namespace, release, components, required=settings is None)
    recorded, sources = found if found else (None, {})
    if target is None:   # deploy_app without node_label: a re-deploy keeps the release where it runs
        if recorded is None:
            raise K8sMoveError(f"node_label: required for a new release ({release_ref(namespace, release)} does not "
                               'exist yet): the nodes to place it on, e.g. {"demo": "node1"}')
        target = recorded.get("node_label") or sources.get("app") or {}
    if settings is not None and recorded is not None:
        if problems := _redeploy_problems(recorded, settings):
            raise K8sMoveError(f"release {release_ref(namespace, release)} exists: " + "; ".join(problems))
    if recorded is not None:
        check_db_secret(api, namespace, release, int(recorded.get("db_instance", 0)))
    elif settings is not None and "external_ip" in settings:   # an existing release keeps its address
        check_service_address(api, namespace, release, settings["external_ip"], settings["port"], external_ip_ranges)
    values = {**(recorded or {}), **(settings or {}), "namespace": namespace, "release": release,
              "node_label": target}
    serving = int(values.get("db_instance", 0))
    db_moves = "db" in components and sources.get("db") not in (None, target)
    switching = db_moves and db_strategy == "switchover"
    if switching:   # a new instance on the target, the Service still on the serving one until the switch
        values.update(db_instance=serving + 1, db_serving_instance=serving)
    manifests = render_manifests(values, components)
    target_nodes = check_placement(api, manifests, values, sources, label_nodes or {}, avoid_nodes, snapshot)
    # the API server's own verdict (validation, admission, a missing namespace) before anything is written
    if refused := refusals_on_server(api, manifests):
        raise K8sMoveError("the API server refuses the release's manifests: " + "; ".join(refused))
    db_switch = None
    if switching:
        # past the fence the old primary is down by design: the move's record on the Lease resumes or undoes it
        if lock.record_of(lock.current(api, namespace, release)).get("phase") not in switchover.PHASES[1:]:
            switchover.check_primary(api, namespace, release, serving)
        service = next(m for m in manifests if _is_db_service(m, release))
        selector = {**service["spec"]["selector"], switchover.LABEL_DB_INSTANCE: str(serving + 1)}
        db_switch = {"from": serving, "to": serving + 1,
                     "service": {**service, "spec": {**service["spec"], "selector": selector}}}
    return {"namespace": namespace, "release": release, "target": target, "components": components,
            "values": values, "sources": sources, "existing": recorded is not None, "target_nodes": target_nodes,
            "avoid_nodes": sorted(avoid_nodes), "manifests": manifests, "db_switch": db_switch,
            "db_strategy": db_strategy if db_moves else None,
            "service_url": f"http://{values['external_ip']}:{values['port']}/"}


def _is_db_service(manifest: dict, release: str) -> bool:
    return manifest["kind"] == "Service" and manifest["metadata"]["name"] == f"{release}-db"


def _is_db_object(entry: dict, release: str) -> bool:
    name = entry["metadata"]["name"]
    return name == f"{release}-db" or name.startswith(f"{release}-db-")


def describe(plan: dict) -> str:
    where = ", ".join(f"{c} on {selector_string(s)}" for c, s in sorted(plan["sources"].items())) or "not deployed"
    how = ""
    if switch := plan.get("db_switch"):
        how = (f"; the DB by switchover to a streaming standby "
               f"({switchover.instance_name(plan['release'], switch['from'])} -> "
               f"{switchover.instance_name(plan['release'], switch['to'])})")
    elif plan.get("db_strategy") == "recreate":
        how = "; the DB stopped, then started on the target (db_strategy recreate)"
    return (f"release {release_ref(plan['namespace'], plan['release'])}: {where} -> "
            f"{selector_string(plan['target'])} ({', '.join(plan['target_nodes'])}){how}")


def wait_group(plan: dict, workloads: list[dict] | None = None) -> dict:
    """What the rollout wait watches for a release: its namespace, its label selector, its workloads."""
    workloads = workloads if workloads is not None else workloads_in(plan["manifests"])
    return {"namespace": plan["namespace"], "release": plan["release"],
            "workloads": [{**w, "avoid_nodes": plan.get("avoid_nodes", [])} for w in workloads]}


def _current_sources(api: ApiClient, plan: dict) -> dict:
    workloads = kube.list_objects(api, "apps/v1", "Deployment", plan["namespace"], release_selector(plan["release"]))
    switch = plan.get("db_switch") or {}
    # the DB instance that serves: the plan's, or after a switchover this plan made, the new one
    instances = [switch["from"], switch["to"]] if switch else [plan["values"].get("db_instance", 0)]
    serving = next((i for i in instances if any(switchover.is_serving_db(w, i) and w["metadata"]["labels"].get(
        LABEL_COMPONENT) == "db" for w in workloads)), instances[0])
    return {w["metadata"]["labels"].get(LABEL_COMPONENT): w["spec"]["template"]["spec"].get("nodeSelector") or {}
            for w in workloads if w["metadata"]["labels"].get(LABEL_COMPONENT) in plan["components"]
            and switchover.is_serving_db(w, serving)}


def _switched_already(api: ApiClient, plan: dict) -> bool:
    """A re-run of a move whose switchover was committed: the release record names the new instance."""
    record = kube.get(api, _release_record(plan))
    values = json.loads(record["data"]["values.json"]) if record else {}
    return int(values.get("db_instance", 0)) == plan["db_switch"]["to"]


def _check_unchanged_since_plan(api: ApiClient, plan: dict) -> None:
    """Each component must still be where the plan found it (or already where it goes: a retried move)."""
    now = _current_sources(api, plan)
    if set(now) != set(plan["sources"]) or any(now[c] not in (plan["sources"][c], plan["target"]) for c in now):
        raise K8sMoveError(f"release {release_ref(plan['namespace'], plan['release'])} changed since it was "
                           f"planned (placement then {plan['sources'] or 'none'}, now {now or 'none'}); run again")


def _release_record(plan: dict) -> dict:
    return next(m for m in plan["manifests"] if is_release_record(m))


def committed_outcome(api: ApiClient, plan: dict, holder: str) -> dict | None:
    """The outcome of this very move if ``holder`` committed it already (an earlier try of the run finished it),
    else None: the record carries the holder's mark for this target and exactly the values this plan records, and
    the lock is no longer the holder's."""
    planned = _release_record(plan)
    record = kube.get(api, planned)
    mark = json.loads(((record or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_COMMITTED) or "{}")
    if (mark.get("holder"), mark.get("target")) != (holder, plan["target"]) or record.get("data") != planned.get("data"):
        return None
    lease = lock.current(api, plan["namespace"], plan["release"])
    return None if lease and lease["spec"].get("holderIdentity") == holder else mark["outcome"]


def lease_seconds(timeout_seconds: int) -> int:
    return int(timeout_seconds) + lock.LEASE_MARGIN_SECONDS


def begin(api: ApiClient, plan: dict, holder: str, timeout_seconds: int, on_secret=lambda value: None) -> dict:
    """Lock the release, record its prior state on the lock, apply the manifests (not the recorded values).

    A DB switchover (``plan["db_switch"]``) applies the Secrets, prepares the primary for a standby, then the rest
    but the DB Service, which ``commit`` switches. Safe to run again for the same holder: the prior state recorded
    first is kept, the apply changes nothing, a switchover's phase is kept.
    Returns {"applied": [{object, result}], "recovered": [...]} (recovered: an expired holder's move undone), or
    {"committed": outcome} when an earlier try of this holder committed the move already (nothing is written).
    """
    namespace, release = plan["namespace"], plan["release"]
    if (done := committed_outcome(api, plan, holder)) is not None:
        return {"applied": [], "recovered": [], "committed": done}
    duration = lease_seconds(timeout_seconds)
    lease, orphan = lock.acquire(api, namespace, release, holder, duration)
    recovered = []
    if orphan:
        log.warning("release %s: %s left a move unfinished; restoring the state before it",
                    release_ref(namespace, release), orphan.get("holder"))
        recovered = undo(api, namespace, release, orphan)["restored"]
    record = lock.record_of(lease)
    switch = plan.get("db_switch")
    if record.get("holder") != holder or "prior_state" not in record:
        _check_unchanged_since_plan(api, plan)
        fenced = [switchover.old_instance_identity(namespace, release, switch)] if switch else []
        record = {"holder": holder, "phase": "applying", "target": plan["target"], "started": time.time(),
                  "prior_state": record_prior_state(api, plan["manifests"] + fenced), "db_switch": switch}
        lease = lock.renew(api, lease, duration, record)
    manifests = [m for m in plan["manifests"] if not is_release_record(m)]
    applied = []
    if switch:
        manifests = [m for m in manifests if not _is_db_service(m, release)]
        if record.get("phase") not in switchover.PHASES[1:] and not _switched_already(api, plan):
            # the primary still serves: ready it for a standby (its login comes from the Secrets, applied first)
            applied = apply_manifests(api, [m for m in manifests if m["kind"] == "Secret"], on_secret=on_secret)
            manifests = [m for m in manifests if m["kind"] != "Secret"]
            on_secret(switchover.replication_password(api, namespace, release))
            switchover.prepare_primary(api, namespace, release, switch["from"])
    applied += apply_manifests(api, manifests, on_secret=on_secret)
    if record.get("phase") not in switchover.PHASES[1:]:
        lock.renew(api, lease, duration, {**record, "phase": "applied"})
    return {"applied": applied, "recovered": recovered}


def _switch_db(api: ApiClient, plan: dict, holder: str) -> dict:
    """The switchover's fence, promotion and switch, each phase recorded on the lock before it acts."""
    namespace, release = plan["namespace"], plan["release"]
    lease = lock.current(api, namespace, release)
    record = lock.record_of(lease)
    if lease is None or lease["spec"].get("holderIdentity") != holder:
        raise K8sMoveError(f"release {release_ref(namespace, release)}: the lock was lost before the DB switchover")

    def advance(phase: str, facts: dict) -> None:
        nonlocal lease, record
        record = {**record, **facts, "phase": phase}
        lease = lock.renew(api, lease, lease["spec"]["leaseDurationSeconds"], record)
    phase = record.get("phase") if record.get("phase") in switchover.PHASES else "applied"
    switch = {**plan["db_switch"], **({"fence_lsn": record["fence_lsn"]} if "fence_lsn" in record else {})}
    return switchover.switch_over(api, namespace, release, switch, phase, advance)


def commit(api: ApiClient, plan: dict, holder: str) -> dict:
    """After the rollout: switch the DB over (when it moves so), prove the move, then record the values and let
    the release go."""
    switch = plan.get("db_switch") if plan.get("db_switch") and not _switched_already(api, plan) else None
    figures = _switch_db(api, plan, holder) if switch else None
    if plan["sources"]:
        verify_source_empty(api, plan["namespace"], plan["release"], plan["sources"], plan["target"])
    answer = verify_endpoint(plan["service_url"], deadline_seconds=ENDPOINT_DEADLINE_SECONDS)
    if switch:
        switchover.retire(api, plan["namespace"], plan["release"], switch["from"])
    outcome = {"answered": answer["body"], "db_switchover": figures}
    record = _release_record(plan)
    marked = {**record, "metadata": {**record["metadata"], "annotations": {
        **(record["metadata"].get("annotations") or {}),
        ANNOTATION_COMMITTED: json.dumps({"holder": holder, "target": plan["target"], "outcome": outcome},
                                         sort_keys=True)}}}
    recorded = apply_manifests(api, [marked])
    lock.release_lock(api, plan["namespace"], plan["release"], holder)
    return {"endpoint": answer, "recorded": recorded, "db_switchover": figures, "outcome": outcome}


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
    undone = undo(api, namespace, release, record)
    lock.renew(api, lease, lease["spec"]["leaseDurationSeconds"], {**record, "phase": "rolling_back"})
    return undone


def undo(api: ApiClient, namespace: str, release: str, record: dict) -> dict:
    """Restore the prior state a lock's record keeps: {"restored", "note", "workloads" to wait for}. Once the DB
    Service selects a switchover's new instance, writes may have reached it: the DB stays, the rest goes back."""
    prior, note = record["prior_state"], None
    if (switch := record.get("db_switch")) and switchover.service_switched(api, namespace, release, switch["to"]):
        prior = [e for e in prior if not _is_db_object(e, release) and not is_release_record(e)]
        _record_serving_instance(api, record["prior_state"], release, switch["to"])
        note = (f"the DB had already switched over to {switchover.instance_name(release, switch['to'])} on the "
                f"target and stays there (writes may have reached it)")
    return {"restored": restore_prior_state(api, prior), "note": note,
            "workloads": workloads_in([e["object"] for e in prior if "object" in e])}


def _record_serving_instance(api: ApiClient, prior: list[dict], release: str, instance: int) -> None:
    """The release record as it was, but naming the DB instance that now serves."""
    entry = next((e for e in prior if is_release_record(e) and "object" in e), None)
    if entry is None:
        return
    values = json.loads(entry["object"]["data"]["values.json"])
    configmap = {**entry["object"], "data": {**entry["object"]["data"],
                                             "values.json": json.dumps({**values, "db_instance": instance},
                                                                       sort_keys=True)}}
    kube.server_side_apply(api, configmap)


def finish_rollback(api: ApiClient, namespace: str, release: str, holder: str) -> None:
    lock.release_lock(api, namespace, release, holder)
