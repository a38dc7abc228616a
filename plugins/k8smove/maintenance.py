"""Node maintenance: cordon the marked nodes, move k8smove's workloads off them, evict the rest, prove them empty.

How a workload leaves a node:

* **surge** (Deployments with a RollingUpdate strategy): a required nodeAffinity expression
  ``kubernetes.io/hostname NotIn [maintenance nodes]`` (plus ``In`` expressions for the target pool) is
  server-side applied as field manager ``k8smove-maintenance`` and ANDed into each of the workload's own
  nodeSelectorTerms; its nodeSelector and affinity are kept, so the app's placement intent still holds and
  the Deployment rolls out surge-first (maxSurge) off the nodes. A separate field manager keeps these fields
  apart from the manifests ``deploy_app``/``migrate_app`` apply, and lets ``end_maintenance`` remove exactly them.
* **recreate** (StatefulSets, Deployments with strategy Recreate or a ReadWriteOnce volume, which a surge pod
  elsewhere could not attach): the pods on the nodes are evicted through
  the Eviction API (their PodDisruptionBudget is respected) and the controller recreates them on a schedulable
  node; the template is not changed, so nothing has to be undone afterwards. A pod on a node-local volume is
  refused instead: its data would stay behind on the node.

Every other pod on the nodes is evicted (Eviction API, never deleted), except the ones ``kubectl drain``
would not touch without force: DaemonSet and mirror pods (left in place; they do not make a node busy),
pods no controller recreates, and pods with emptyDir volumes unless ``allow_local_storage``.
"""
from __future__ import annotations

import json
import logging
import time

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from k8smove import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, K8sMoveError, kube
from k8smove.engine import describe, plan_release, probe_target, release_ref
from k8smove.labels import matches, selector_string
from k8smove.parallel import in_parallel
from k8smove.preflight import node_problems, used_by_node

log = logging.getLogger(__name__)

MAINTENANCE_FIELD_MANAGER = "k8smove-maintenance"
# Our nodeAffinity expressions as JSON, so a later apply (or end_maintenance) can tell them from the app's.
EXCLUSION_ANNOTATION = "k8smove.io/maintenance-exclusion"
HOSTNAME_LABEL = "kubernetes.io/hostname"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
REQUIRED_AFFINITY = "requiredDuringSchedulingIgnoredDuringExecution"
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 5.0
# The writes maintenance makes in a workload's namespace, as (verb, group, resource, subresource): what ClusterRole
# k8smove-node-maintenance-write (include/rbac/node-maintenance.yaml) grants where a RoleBinding gives it.
PATCH_DEPLOYMENTS = ("patch", "apps", "deployments", "")
EVICT_PODS = ("create", "", "pods", "eviction")
WRITE_RIGHTS_RECIPE = "kubectl apply -n {namespace} -f include/rbac/namespace/"


def pod_ref(pod: dict) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def _ready(node: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in node.get("status", {}).get("conditions") or [])


def select_nodes(nodes: list[dict], maintenance_label: dict, target_selector: dict | None,
                 label_given: bool = False) -> tuple[list, list]:
    """(names of the nodes marked for maintenance, names of the Ready, schedulable nodes they may move to).

    ``label_given``: the run's conf names maintenance_label, so a label that marks no node is a mistake to refuse;
    otherwise (a scheduled run, the default label) no node marked means nothing to do."""
    names = sorted(n["metadata"]["name"] for n in nodes)
    marked = sorted(n["metadata"]["name"] for n in nodes if matches(maintenance_label, n["metadata"].get("labels")))
    if label_given and not marked:
        raise K8sMoveError(f"maintenance_label {selector_string(maintenance_label)} matches no node (nodes: "
                           f"{', '.join(names)}): nothing to take into maintenance; label the nodes first")
    if marked and marked == names:
        raise K8sMoveError(f"maintenance_label {selector_string(maintenance_label)} matches every node "
                           f"({', '.join(names)}): none would be left to move the workloads to")
    pool = sorted(n["metadata"]["name"] for n in nodes
                  if n["metadata"]["name"] not in marked and _ready(n) and not n.get("spec", {}).get("unschedulable")
                  and matches(target_selector or {}, n["metadata"].get("labels")))
    # a target_selector given must leave somewhere to go, even when no node is marked yet
    if (marked or target_selector) and not pool:
        key, wanted = f"maintenance_label {selector_string(maintenance_label)}", ""
        if target_selector:
            wanted = f" labelled {selector_string(target_selector)}"
            unmatched = not any(matches(target_selector, n["metadata"].get("labels")) for n in nodes)
            key = f"target_selector {selector_string(target_selector)}{' matches no node' if unmatched else ''}"
        raise K8sMoveError(f"{key}: no Ready, schedulable node{wanted} outside maintenance "
                           f"({', '.join(marked) or 'none marked'}) to move the workloads to")
    return marked, pool


def _owner_kind(pod: dict) -> str | None:
    owners = [o for o in pod["metadata"].get("ownerReferences") or [] if o.get("controller")]
    return owners[0]["kind"] if owners else None


def _finished(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def left_in_place(pod: dict) -> str | None:
    """Why a pod stays on a drained node without making it busy (kubectl drain ignores these too), or None."""
    if MIRROR_ANNOTATION in (pod["metadata"].get("annotations") or {}):
        return "mirror pod: the kubelet runs it from a static manifest"
    if _owner_kind(pod) == "DaemonSet":
        return "DaemonSet pod: its DaemonSet runs one on every node"
    return None


def refused_eviction(pod: dict, allow_local_storage: bool) -> str | None:
    """Why evicting ``pod`` would lose something, so it is reported instead; None when it can be evicted."""
    if _owner_kind(pod) is None:
        return "not managed by a controller: evicting it would delete it for good"
    empty_dirs = [v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v]
    if empty_dirs and not allow_local_storage:
        return (f"uses local storage (emptyDir {', '.join(empty_dirs)}): its data would be lost "
                f"(allow_local_storage evicts it)")
    return None


def _pods_of(workload: dict, pods: list[dict]) -> list[dict]:
    selector = workload["spec"]["selector"].get("matchLabels") or {}
    return [p for p in pods if p["metadata"]["namespace"] == workload["metadata"]["namespace"]
            and selector and matches(selector, p["metadata"].get("labels"))]


def _claims(pods: list[dict], pvcs: dict[str, dict]) -> list[tuple[dict, str, dict | None]]:
    """(pod, claim name, the PersistentVolumeClaim if it exists) for each claim the pods mount."""
    return [(pod, claim, pvcs.get(f"{pod['metadata']['namespace']}/{claim}"))
            for pod in pods for volume in pod["spec"].get("volumes") or []
            if (claim := (volume.get("persistentVolumeClaim") or {}).get("claimName"))]


def move_mode(workload: dict, claims: list[tuple[dict, str, dict | None]]) -> str:
    """``surge`` when the controller can start new pods before stopping old ones, else ``recreate``.

    A surge pod on another node cannot attach a ReadWriteOnce volume the old pod still holds.
    """
    single_writer = any(set((pvc or {}).get("spec", {}).get("accessModes") or ["ReadWriteOnce"])
                        & {"ReadWriteOnce", "ReadWriteOncePod"} for _, _, pvc in claims)
    if workload["kind"] == "Deployment" and not single_writer and \
            (workload["spec"].get("strategy") or {}).get("type") != "Recreate":
        return "surge"
    return "recreate"


def node_local_volumes(claims: list[tuple[dict, str, dict | None]], pvs: dict[str, dict]) -> list[str]:
    """``pod: claim on volume`` for each claim bound to a volume that lives on one node."""
    found = []
    for pod, claim, pvc in claims:
        pv = pvs.get((pvc or {}).get("spec", {}).get("volumeName"))
        if pv and ({"nodeAffinity", "local", "hostPath"} & set(pv["spec"])):
            found.append(f"pod {pod['metadata']['name']}: PersistentVolumeClaim {claim} on node-local "
                         f"volume {pv['metadata']['name']}")
    return found


def _enforced_target(mode: str, target_selector: dict | None) -> dict:
    """The pool's labels a move's new pods must have: only a surge move changes placement (recreate evicts)."""
    return (target_selector or {}) if mode == "surge" else {}


def _placement_problem(workload: dict, mode: str, pool_nodes: list[dict], used: dict,
                       target_selector: dict | None) -> str | None:
    """None when at least one pool node takes the workload's pods, else why none does."""
    pod_spec = workload["spec"]["template"]["spec"]
    # Both must hold: the exclusion is ANDed with the workload's own nodeSelector, never replaces it.
    wanted = [s for s in (pod_spec.get("nodeSelector") or {}, _enforced_target(mode, target_selector)) if s]
    verdicts = {}
    for node in pool_nodes:
        name = node["metadata"]["name"]
        if missing := [selector_string(s) for s in wanted if not matches(s, node["metadata"].get("labels"))]:
            verdicts[name] = [f"not labelled {' and '.join(missing)}"]
        else:
            verdicts[name] = node_problems(node, pod_spec, used.get(name, {}))
    if all(verdicts.values()):
        return "fits on no node outside maintenance: " + "; ".join(
            f"{node}: {', '.join(problems)}" for node, problems in verdicts.items())
    return None


def make_plan(nodes: list[dict], pods: list[dict], workloads: list[dict], pvcs: list[dict], pvs: list[dict],
              maintenance_label: dict, target_selector: dict | None, ready_label: dict,
              allow_local_storage: bool, releases: dict | None = None) -> dict:
    """What a maintenance run does, from the objects as listed; pure, so the dry run and the tests share it.

    ``moves``: one per workload with pods on the nodes (the mapped move tasks' input); ``refused``: workloads
    that cannot move without losing data or room; ``evict``: other pods to evict; ``untouched``: pods left
    alone and why (``blocks``: whether it keeps the node from being empty). ``releases`` ({"release_plans",
    "refused", "workloads"}, from ``plan_releases``): k8smove's releases, moved by the move engine as wholes;
    their workloads are not planned again here.
    """
    releases = releases or {"release_plans": [], "refused": [], "workloads": {}}
    marked, pool = select_nodes(nodes, maintenance_label, target_selector)
    on_nodes = [p for p in pods if p["spec"].get("nodeName") in marked and not _finished(p)]
    pool_nodes = [n for n in nodes if n["metadata"]["name"] in pool]
    used = used_by_node(pods)
    pvc_by_ref = {f"{c['metadata']['namespace']}/{c['metadata']['name']}": c for c in pvcs}
    pv_by_name = {v["metadata"]["name"]: v for v in pvs}
    moves, refused, claimed = [], [], set()
    for workload in workloads:
        its_pods = _pods_of(workload, on_nodes)
        if not its_pods:
            continue
        claimed |= {pod_ref(p) for p in its_pods}
        if kube.ref(workload) in releases["workloads"]:
            continue
        claims = _claims(its_pods, pvc_by_ref)
        mode = move_mode(workload, claims)
        local = node_local_volumes(claims, pv_by_name)
        problem = (f"on node-local storage ({'; '.join(local)}): moving it would leave its data behind" if local
                   else _placement_problem(workload, mode, pool_nodes, used, target_selector))
        pod_names = sorted(pod_ref(p) for p in its_pods)
        if problem:
            refused.append({"workload": kube.ref(workload), "pods": pod_names, "reason": problem})
            continue
        own_selector = workload["spec"]["template"]["spec"].get("nodeSelector") or {}
        target = _enforced_target(mode, target_selector)
        moves.append({
            "kind": workload["kind"], "namespace": workload["metadata"]["namespace"],
            "name": workload["metadata"]["name"], "mode": mode, "pods": pod_names, "avoid_nodes": marked,
            "target_selector": target, "node_selector": {**own_selector, **target}})
    evict, untouched = [], []
    for pod in on_nodes:
        if pod_ref(pod) in claimed:
            continue
        if reason := left_in_place(pod):
            untouched.append({"pod": pod_ref(pod), "node": pod["spec"]["nodeName"], "reason": reason, "blocks": False})
        elif reason := refused_eviction(pod, allow_local_storage):
            untouched.append({"pod": pod_ref(pod), "node": pod["spec"]["nodeName"], "reason": reason, "blocks": True})
        else:
            evict.append({"namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"],
                          "node": pod["spec"]["nodeName"]})
    return {"nodes": marked, "pool": pool, "moves": moves, "refused": releases["refused"] + refused, "evict": evict,
            "untouched": untouched, "ready_labels": {node: ready_label for node in marked},
            "release_plans": releases["release_plans"],
            "probe_targets": [probe_target(p) for p in releases["release_plans"]]}


def release_target(current: dict, target_selector: dict | None) -> dict:
    """Where a release goes when maintenance moves it: its node_label with target_selector's keys replaced
    (and added), so ``{"demo": "node2"}`` moves a release placed on demo=node1 to the nodes labelled demo=node2."""
    return {**current, **(target_selector or {})}


def _release_refusal(ref: str, pods: list[str], current: dict, reason: str) -> dict:
    return {"workload": f"release {ref}", "pods": pods,
            "reason": f"{reason}; its node_label is {selector_string(current)}: set target_selector to the label "
                      f"of nodes outside maintenance (e.g. {{\"{next(iter(current), 'key')}\": \"<value>\"}}) or "
                      f"release_targets {{\"{ref}\": {{...}}}} to say where it goes"}


def plan_releases(api: ApiClient, marked: list[str], target_selector: dict | None,
                  release_targets: dict | None, nodes: list[dict], all_pods: list[dict],
                  db_strategy: str = "switchover") -> dict:
    """Plan, with the move engine, every k8smove release that has pods on the ``marked`` nodes, the releases in
    parallel; every release is checked against the one listing of ``nodes`` and ``all_pods`` the maintenance plan
    made.

    Returns {"release_plans": [engine plans], "refused": [{workload, pods, reason}], "workloads": {refs}}.
    """
    pods = [p for p in all_pods if (p["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
            and p["spec"].get("nodeName") in marked and not _finished(p)]
    found = []
    for record in kube.list_objects(api, "v1", "ConfigMap", label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"):
        meta = record["metadata"]
        if not meta["name"].endswith("-k8smove") or LABEL_INSTANCE not in (meta.get("labels") or {}):
            continue
        namespace, release = meta["namespace"], meta["labels"][LABEL_INSTANCE]
        its_pods = sorted(pod_ref(p) for p in pods if p["metadata"]["namespace"] == namespace
                          and (p["metadata"].get("labels") or {}).get(LABEL_INSTANCE) == release)
        if its_pods:
            found.append((namespace, release, its_pods))

    def plan_one(found_release) -> tuple[set, dict | None, dict | None]:
        """(its Deployments' refs, its plan or None, its refusal or None): each release planned on its own."""
        namespace, release, its_pods = found_release
        ref = release_ref(namespace, release)
        deployments = kube.list_objects(api, "apps/v1", "Deployment", namespace,
                                        f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={release}")
        refs = {kube.ref({**d, "kind": "Deployment"}) for d in deployments}
        current = next((d["spec"]["template"]["spec"].get("nodeSelector") or {} for d in deployments), {})
        target = (release_targets or {}).get(ref) or release_target(current, target_selector)
        if target == current:
            return refs, None, _release_refusal(ref, its_pods, current, "no target outside maintenance given")
        try:
            return refs, {**plan_release(api, namespace, release, target, avoid_nodes=marked,
                                         snapshot=(nodes, all_pods), db_strategy=db_strategy), "pods": its_pods}, None
        except K8sMoveError as err:
            return refs, None, _release_refusal(ref, its_pods, current,
                                                f"cannot move to {selector_string(target)}: {err}")
    planned = in_parallel(plan_one, found)   # each plan reads and dry-runs on its own: API round trips
    return {"release_plans": [plan for _, plan, _ in planned if plan],
            "refused": [refusal for _, _, refusal in planned if refusal],
            "workloads": set().union(*(refs for refs, _, _ in planned))}


def _workloads(api: ApiClient, extra_selector: dict | None) -> list[dict]:
    """k8smove's Deployments/StatefulSets in every namespace, and the ones ``extra_selector`` picks."""
    selectors = [f"{LABEL_MANAGED_BY}={MANAGED_BY}"] + ([selector_string(extra_selector)] if extra_selector else [])
    found = {}
    for selector in selectors:
        for kind in ("Deployment", "StatefulSet"):
            for workload in kube.list_objects(api, "apps/v1", kind, label_selector=selector):
                found[kube.ref({**workload, "kind": kind})] = {**workload, "kind": kind, "apiVersion": "apps/v1"}
    return [found[ref] for ref in sorted(found)]


def plan_maintenance(api: ApiClient, maintenance_label: dict, target_selector: dict | None,
                     extra_selector: dict | None, ready_label: dict, allow_local_storage: bool,
                     release_targets: dict | None = None, db_strategy: str = "switchover",
                     label_given: bool = False) -> dict:
    """``make_plan`` over the cluster as it is now, k8smove's releases planned by the move engine, and
    ``missing_rights``: the writes it needs that this run may not make (``missing_write_rights``). Reads only (and
    access reviews); ``label_given``: see ``select_nodes``."""
    nodes, pods = kube.list_objects(api, "v1", "Node"), kube.list_objects(api, "v1", "Pod")
    marked, _ = select_nodes(nodes, maintenance_label, target_selector, label_given)
    releases = plan_releases(api, marked, target_selector, release_targets, nodes, pods,
                             db_strategy) if marked else None
    plan = make_plan(
        nodes, pods, _workloads(api, extra_selector), kube.list_objects(api, "v1", "PersistentVolumeClaim"),
        kube.list_objects(api, "v1", "PersistentVolume"), maintenance_label, target_selector, ready_label,
        allow_local_storage, releases=releases)
    # rights are namespaced (include/rbac/namespace/): a namespace without them is refused here, not at its write
    return {**plan, "missing_rights": missing_write_rights(api, writes_of(plan))}


def writes_of(plan: dict) -> dict[tuple[str, tuple], list[str]]:
    """{(namespace, write): [what needs it]} for every write the plan's moves and evictions make in a namespace
    (a release moves through its own Role, release.yaml, and is not among them)."""
    needed: dict[tuple[str, tuple], list[str]] = {}
    for move in plan["moves"]:
        write = PATCH_DEPLOYMENTS if move["mode"] == "surge" else EVICT_PODS
        needed.setdefault((move["namespace"], write), []).append(f"{move['kind']} {move['namespace']}/{move['name']}")
    for pod in plan["evict"]:
        needed.setdefault((pod["namespace"], EVICT_PODS), []).append(f"pod {pod['namespace']}/{pod['name']}")
    return needed


def missing_write_rights(api: ApiClient, needed: dict[tuple[str, tuple], list[str]]) -> list[dict]:
    """The writes of ``needed`` (``writes_of``) this run's identity may not make, each asked of the API server with a
    SelfSubjectAccessReview (which every authenticated identity may create): [{namespace, verb, resource, for}], []
    when it may make them all."""
    missing = []
    for (namespace, (verb, group, resource, subresource)), needed_for in sorted(needed.items()):
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource,
                      "subresource": subresource}
        review = kube.call(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}})
        if not review["status"].get("allowed"):
            missing.append({"namespace": namespace, "verb": verb,
                            "resource": f"{resource}/{subresource}" if subresource else f"{resource}.{group}",
                            "for": needed_for})
    return missing


def describe_missing_rights(missing: list[dict]) -> list[str]:
    """Each missing write in words: the namespace, the verb and resource, what needs it, and how to grant it."""
    return [f"namespace {m['namespace']}: not allowed to {m['verb']} {m['resource']} (needed for "
            f"{', '.join(m['for'])}); grant k8smove's maintenance rights there: "
            f"{WRITE_RIGHTS_RECIPE.format(namespace=m['namespace'])}" for m in missing]


def blocking(plan: dict) -> list[str]:
    """Why the plan cannot empty the nodes: refused workloads, pods nothing may evict and the writes this run may
    not make ([] when it can)."""
    return ([f"{r['workload']} ({', '.join(r['pods'])}): {r['reason']}" for r in plan["refused"]] +
            [f"pod {u['pod']} on {u['node']}: {u['reason']}" for u in plan["untouched"] if u["blocks"]] +
            describe_missing_rights(plan.get("missing_rights", [])))


def describe_plan(plan: dict) -> list[str]:
    """The plan in lines a person reads in the task log."""
    if not plan["nodes"]:
        return ["No node is marked for maintenance: nothing to do"]
    lines = [f"Maintenance of {', '.join(plan['nodes'])}; workloads may go to {', '.join(plan['pool'])}"]
    lines += [f"move release  {describe(p)}" for p in plan.get("release_plans", [])]
    for move in plan["moves"]:
        where = (f"nodes with {selector_string(move['node_selector'])}" if move["node_selector"] else "any pool node")
        lines.append(f"move {move['mode']:8} {move['kind']} {move['namespace']}/{move['name']} "
                     f"({', '.join(move['pods'])}) -> {where}")
    lines += [f"refuse   {r['workload']} ({', '.join(r['pods'])}): {r['reason']}" for r in plan["refused"]]
    lines += [f"refuse   {line}" for line in describe_missing_rights(plan.get("missing_rights", []))]
    lines += [f"evict    pod {p['namespace']}/{p['name']} on {p['node']}" for p in plan["evict"]]
    lines += [f"{'keep' if u['blocks'] else 'ignore':8} pod {u['pod']} on {u['node']}: {u['reason']}"
              for u in plan["untouched"]]
    return lines


def _property_path(obj: dict, *keys: str):
    for key in keys:
        obj = (obj or {}).get(key)
    return obj


def _recorded(workload: dict) -> list[dict]:
    return json.loads((workload["metadata"].get("annotations") or {}).get(EXCLUSION_ANNOTATION, "[]"))


def _node_terms(workload: dict, avoid_nodes: list[str], target_selector: dict) -> tuple[list[dict], list[dict]]:
    """(our expressions, the required nodeSelectorTerms with them): ours ANDed into each of the workload's own
    terms (the recorded expressions of an earlier run replaced), or a term of their own if it has none."""
    ours = ([{"key": HOSTNAME_LABEL, "operator": "NotIn", "values": sorted(avoid_nodes)}] +
            [{"key": key, "operator": "In", "values": [value]} for key, value in sorted(target_selector.items())]
            if avoid_nodes else [])
    recorded = _recorded(workload)
    current = _property_path(workload, "spec", "template", "spec", "affinity", "nodeAffinity",
                             REQUIRED_AFFINITY, "nodeSelectorTerms") or []
    own_terms = []
    for term in current:
        own = [e for e in term.get("matchExpressions") or [] if e not in recorded]
        rest = {k: v for k, v in term.items() if k != "matchExpressions"}
        if own or rest:
            own_terms.append({**rest, **({"matchExpressions": own} if own else {})})
    terms = [{**t, "matchExpressions": t.get("matchExpressions", []) + ours} for t in own_terms] if ours else own_terms
    if ours and not terms:
        terms = [{"matchExpressions": ours}]
    return ours, terms


def exclusion_manifest(workload: dict, avoid_nodes: list[str], target_selector: dict) -> dict:
    """What ``k8smove-maintenance`` server-side applies so the pods avoid ``avoid_nodes`` and stay in the pool.

    nodeSelectorTerms is an atomic list, so it is applied whole (the workload's own terms with ours ANDed in).
    """
    ours, terms = _node_terms(workload, avoid_nodes, target_selector)
    meta = workload["metadata"]
    return {"apiVersion": "apps/v1", "kind": workload["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "annotations": {EXCLUSION_ANNOTATION: json.dumps(ours, sort_keys=True)}},
            "spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
                REQUIRED_AFFINITY: {"nodeSelectorTerms": terms}}}}}}}


def release_patch(workload: dict, nodes: list[str]) -> dict:
    """Merge patch that stops excluding ``nodes`` (all of ours goes once no excluded node is left).

    A patch rather than an apply that drops the fields: apply removal can leave the required struct behind
    empty, which the API rejects (nodeSelectorTerms is required); null removes the struct itself.
    """
    recorded = _recorded(workload)
    avoided = [n for e in recorded if e["key"] == HOSTNAME_LABEL and e["operator"] == "NotIn" for n in e["values"]]
    target = {e["key"]: e["values"][0] for e in recorded if e["operator"] == "In"}
    ours, terms = _node_terms(workload, [n for n in avoided if n not in nodes], target)
    affinity = _property_path(workload, "spec", "template", "spec", "affinity") or {}
    node_affinity = {k: v for k, v in (affinity.get("nodeAffinity") or {}).items() if k != REQUIRED_AFFINITY}
    if terms:
        patch = {"nodeAffinity": {REQUIRED_AFFINITY: {"nodeSelectorTerms": terms}}}
    elif node_affinity:
        patch = {"nodeAffinity": {REQUIRED_AFFINITY: None}}
    else:
        # No empty structs left behind: the template must hash as before the exclusion, so the Deployment
        # returns to its old ReplicaSet (and its running pods) instead of rolling out yet another one.
        patch = {"nodeAffinity": None} if {k for k in affinity if k != "nodeAffinity"} else None
    return {"metadata": {"annotations": {EXCLUSION_ANNOTATION: json.dumps(ours, sort_keys=True) if ours else None}},
            "spec": {"template": {"spec": {"affinity": patch}}}}


def apply_exclusion(api: ApiClient, move: dict) -> dict:
    """Server-side apply the move's nodeAffinity exclusion to its workload; returns the workload as applied."""
    workload = kube.get(api, {"apiVersion": "apps/v1", "kind": move["kind"],
                              "metadata": {"namespace": move["namespace"], "name": move["name"]}})
    if workload is None:
        raise K8sMoveError(f"{move['kind']} {move['namespace']}/{move['name']} no longer exists")
    manifest = exclusion_manifest(workload, move["avoid_nodes"], move["target_selector"])
    return kube.server_side_apply(api, manifest, field_manager=MAINTENANCE_FIELD_MANAGER)


def _excludes(workload: dict, nodes: list[str]) -> bool:
    return any(set(e["values"]) & set(nodes) for e in _recorded(workload) if e["key"] == HOSTNAME_LABEL)


def _lift(api: ApiClient, workload: dict, nodes: list[str]) -> None:
    meta = workload["metadata"]
    AppsV1Api(api).patch_namespaced_deployment(meta["name"], meta["namespace"],
                                               release_patch({**workload, "kind": "Deployment"}, nodes),
                                               field_manager=MAINTENANCE_FIELD_MANAGER)


def excluding(api: ApiClient, nodes: list[str]) -> list[dict]:
    """The Deployments whose exclusion names one of ``nodes``."""
    return [w for w in kube.list_objects(api, "apps/v1", "Deployment") if _excludes(w, nodes)]


def missing_lift_rights(api: ApiClient, nodes: list[str]) -> list[dict]:
    """end_maintenance's ``missing_write_rights``: the namespaces where it could not lift an exclusion of ``nodes``."""
    needed: dict[tuple[str, tuple], list[str]] = {}
    for workload in excluding(api, nodes):
        meta = workload["metadata"]
        needed.setdefault((meta["namespace"], PATCH_DEPLOYMENTS), []).append(
            f"Deployment {meta['namespace']}/{meta['name']}")
    return missing_write_rights(api, needed)


def lift_exclusions(api: ApiClient, nodes: list[str]) -> list[str]:
    """Let every Deployment whose exclusion names one of ``nodes`` use them again; returns those changed."""
    lifted = []
    for workload in excluding(api, nodes):
        _lift(api, workload, nodes)
        lifted.append(f"Deployment {workload['metadata']['namespace']}/{workload['metadata']['name']}")
    return lifted


def undo_exclusion(api: ApiClient, move: dict) -> bool:
    """A failed surge move: lift its exclusion, so the Deployment rolls back to its pods that still run (the
    Pending surge pods go); True when there was one to lift."""
    workload = kube.get(api, {"apiVersion": "apps/v1", "kind": move["kind"],
                              "metadata": {"namespace": move["namespace"], "name": move["name"]}})
    if workload is None or not _excludes(workload, move["avoid_nodes"]):
        return False
    _lift(api, workload, move["avoid_nodes"])
    return True


def set_unschedulable(api: ApiClient, nodes: list[str], unschedulable: bool) -> list[str]:
    """Cordon (or uncordon) ``nodes``, like kubectl; returns the nodes changed (the others already were)."""
    core, changed = CoreV1Api(api), []
    for node in nodes:
        if bool(core.read_node(node).spec.unschedulable) != unschedulable:
            core.patch_node(node, {"spec": {"unschedulable": unschedulable or None}})   # None: as kubectl uncordon
            changed.append(node)
    return changed


def _evict_once(core: CoreV1Api, namespace: str, name: str) -> str | None:
    """Ask the Eviction API once; None when the pod is evicted (or already gone), else why it was refused."""
    try:
        core.create_namespaced_pod_eviction(name, namespace, {"apiVersion": "policy/v1", "kind": "Eviction",
                                                              "metadata": {"name": name, "namespace": namespace}})
        return None
    except ApiException as err:
        if err.status == 404:
            return None
        if err.status in (429, 500):   # a PDB forbids it now / the pod has several PDBs
            return _refusal(err)
        raise


def _refusal(err: ApiException) -> str:
    """The Status message and its causes (which name the budget and its numbers)."""
    try:
        status = json.loads(err.body)
    except (TypeError, ValueError):
        return str(err.reason)
    causes = [c["message"] for c in (status.get("details") or {}).get("causes") or [] if c.get("message")]
    return " ".join([status.get("message") or str(err.reason), *causes])


def evict_pods(api: ApiClient, pods: list[dict], timeout_seconds: float) -> dict:
    """Evict ``pods`` ([{namespace, name}]) through the Eviction API, retrying refusals within the timeout.

    A refused eviction is retried with backoff (a budget may allow it once other pods are Ready again),
    never forced. Returns {"evicted": [ns/name], "blocked": {ns/name: the API's last reason}}.
    """
    core = CoreV1Api(api)
    deadline = time.monotonic() + timeout_seconds
    pending, evicted, blocked, delay = list(pods), [], {}, FIRST_RETRY_SECONDS
    while pending:
        still = []
        for pod in pending:
            ref = f"{pod['namespace']}/{pod['name']}"
            if (reason := _evict_once(core, pod["namespace"], pod["name"])) is None:
                evicted.append(ref)
                blocked.pop(ref, None)
                log.info("evicted pod %s", ref)
            else:
                blocked[ref] = reason
                still.append(pod)
        pending = still
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        log.info("eviction refused for %s; retrying in %.0fs", ", ".join(blocked), min(delay, remaining))
        time.sleep(min(delay, remaining))   # backoff between attempts of a bounded retry
        delay = min(delay * 2, MAX_RETRY_SECONDS)
    return {"evicted": evicted, "blocked": blocked}


def pods_on_nodes(api: ApiClient, nodes: list[str]) -> list[dict]:
    """Pods on ``nodes`` that are not finished."""
    return [p for p in kube.list_objects(api, "v1", "Pod") if p["spec"].get("nodeName") in nodes and not _finished(p)]


def wait_until_gone(api: ApiClient, refs: list[str], nodes: list[str], timeout_seconds: float) -> list[str]:
    """Wait for the evicted pods to leave ``nodes`` (termination grace); returns the ones still there."""
    deadline, delay = time.monotonic() + timeout_seconds, FIRST_RETRY_SECONDS / 4
    while True:
        left = sorted(set(refs) & {pod_ref(p) for p in pods_on_nodes(api, nodes)})
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            return left
        time.sleep(min(delay, remaining))   # bounded wait for the kubelet to finish terminating them
        delay = min(delay * 2, MAX_RETRY_SECONDS)


def what_is_left(plan: dict, pods: list[dict], drained: dict) -> list[str]:
    """``pod on node: why`` for every pod that keeps a node busy ([] when every node is empty).

    ``plan`` is a fresh plan (after the moves and evictions), ``drained`` what the eviction step reported.
    """
    reasons = {}
    for move in plan["moves"]:
        for pod in move["pods"]:
            reasons[pod] = f"{move['kind']} {move['namespace']}/{move['name']} still has it there (move incomplete)"
    for refused in plan["refused"]:
        for pod in refused["pods"]:
            reasons[pod] = f"{refused['workload']} not moved: {refused['reason']}"
    for release in plan.get("release_plans", []):
        for pod in release.get("pods", []):
            reasons[pod] = f"release {release_ref(release['namespace'], release['release'])} not moved"
    reasons |= {u["pod"]: u["reason"] for u in plan["untouched"] if u["blocks"]}
    reasons |= {pod: f"eviction refused: {reason}" for pod, reason in drained.get("blocked", {}).items()}
    left = []
    for pod in pods:
        if left_in_place(pod):
            continue
        why = reasons.get(pod_ref(pod)) or ("terminating" if pod["metadata"].get("deletionTimestamp")
                                            else "arrived after the eviction step")
        left.append(f"{pod_ref(pod)} on {pod['spec']['nodeName']}: {why}")
    return sorted(left)
