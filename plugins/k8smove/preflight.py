"""Checks made before any write: conf, nodes (labels, readiness, cordon, taints, room) and placement.

Every problem found is collected, so one failed run names all of them; nothing here writes.
"""
from __future__ import annotations

import ipaddress
import json

from kubernetes.client import ApiClient
from kubernetes.utils.quantity import parse_quantity

from k8smove import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, K8sMoveError, kube, release_selector
from k8smove.labels import check_selector, matches, node_selector_matches, selector_string, split_label_changes
from k8smove.switchover import instance_name, is_serving_db

BLOCKING_TAINT_EFFECTS = ("NoSchedule", "NoExecute")
DEFAULT_STORAGE_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


def check_conf_keys(conf: dict, allowed) -> None:
    if unknown := sorted(set(conf) - set(allowed)):
        raise K8sMoveError(f"unknown conf key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def check_external_ip(value) -> None:
    """A Service's external address must be one Kubernetes accepts in spec.externalIPs (its non-special rule)."""
    try:
        ip = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        raise K8sMoveError(f"external_ip {value!r}: not an IP address") from None
    for special, what in ((ip.is_unspecified, "unspecified"), (ip.is_loopback, "a loopback address"),
                          (ip.is_link_local, "link-local"), (ip.is_multicast, "multicast")):
        if special:
            raise K8sMoveError(f"external_ip {value}: {what}, which Kubernetes refuses in a Service's externalIPs; "
                               f"use an address of the nodes or of a load balancer")


# Where a Service's external address is routed to the cluster besides its nodes' own addresses, unless the operator
# declares otherwise ([k8smove] external_ip_ranges): kubesim's external range (kubesim.addresses.EXTERNAL_RANGE),
# the demo cluster's, as external_ip's default is.
EXTERNAL_IP_RANGES = "10.192.0.0/12"


def external_ip_ranges(declared: str) -> list:
    """``"10.192.0.0/12, 192.0.2.0/24"`` -> the networks; raises naming the setting when one is not a CIDR."""
    networks = []
    for text in filter(None, (part.strip() for part in (declared or "").split(","))):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise K8sMoveError(f"[k8smove] external_ip_ranges: {text!r} is not an address range such as "
                               f"10.192.0.0/12") from None
    return networks


def node_addresses(nodes: list[dict]) -> dict[str, str]:
    """Address -> node name, of every address a node reports (InternalIP, ExternalIP) in its status."""
    return {a["address"]: n["metadata"]["name"] for n in nodes for a in n.get("status", {}).get("addresses") or []
            if a.get("type") in ("InternalIP", "ExternalIP")}


def check_cluster_address(value: str, nodes: list[dict], ranges: str) -> None:
    """external_ip must reach the cluster: a node's own address (kube-proxy there serves a Service's externalIPs)
    or one in a range the operator declares routed to the nodes or a load balancer; any other is never answered."""
    ip, networks, owners = ipaddress.ip_address(value), external_ip_ranges(ranges), node_addresses(nodes)
    if value in owners or any(ip in network for network in networks):
        return
    addresses = ", ".join(f"{node} {address}" for address, node in sorted(owners.items()))
    raise K8sMoveError(
        f"external_ip {value}: not an address of this cluster, so nothing would ever answer on it: neither a "
        f"node's address ({addresses or 'none'}) nor in the ranges declared routed to it ([k8smove] "
        f"external_ip_ranges: {', '.join(map(str, networks)) or 'none'}); use one of those, or declare its range "
        f"there (AIRFLOW__K8SMOVE__EXTERNAL_IP_RANGES)")


def service_addresses(service: dict) -> set[str]:
    """The addresses a Service claims beyond its cluster IP: spec.externalIPs and its load balancer's."""
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return set(service.get("spec", {}).get("externalIPs") or []) | {i["ip"] for i in ingress if i.get("ip")}


def check_address_free(value: str, port: int, services: list[dict], namespace: str, release: str) -> None:
    """No other Service may claim external_ip:port: kube-proxy would send the connections to either of them."""
    for service in services:
        meta = service["metadata"]
        if meta["namespace"] == namespace and matches({LABEL_INSTANCE: release, LABEL_MANAGED_BY: MANAGED_BY},
                                                      meta.get("labels")):
            continue   # this release's own
        ports = service["spec"].get("ports") or []
        if value in service_addresses(service) and any(p.get("port") == port and p.get("protocol", "TCP") == "TCP"
                                                       for p in ports):
            raise K8sMoveError(f"external_ip {value} port {port}: already claimed by Service "
                               f"{meta['namespace']}/{meta['name']}; choose another external_ip or port")


def check_service_address(api: ApiClient, namespace: str, release: str, value: str, port: int, ranges: str) -> None:
    """A new release's external_ip: an address of the cluster, and no other Service's at the same port."""
    check_cluster_address(value, kube.list_objects(api, "v1", "Node"), ranges)
    check_address_free(value, int(port), kube.list_objects(api, "v1", "Service"), namespace, release)


def labels_after_changes(nodes: list[dict], label_nodes: dict) -> dict[str, dict]:
    """Node name -> labels as they will be once LabelNodes has run; raises naming an unknown node."""
    labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in nodes}
    for node, changes in label_nodes.items():
        if node not in labels:
            raise K8sMoveError(f"label_nodes: node {node!r} not found (nodes: {', '.join(sorted(labels))})")
        to_set, to_remove = split_label_changes(f"label_nodes.{node}", changes)
        for key in to_remove:
            labels[node].pop(key, None)
        labels[node].update(to_set)
    return labels


def _requests(pod_spec: dict) -> dict[str, object]:
    total = {"cpu": parse_quantity(0), "memory": parse_quantity(0)}
    for container in pod_spec.get("containers", []):
        for resource, amount in ((container.get("resources") or {}).get("requests") or {}).items():
            if resource in total:
                total[resource] += parse_quantity(amount)
    return total


def _tolerated(taint: dict, tolerations: list[dict]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        if toleration.get("operator") == "Exists":
            if toleration.get("key") in (None, "", taint.get("key")):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_problems(node: dict, pod_spec: dict, used: dict) -> list[str]:
    """Why a pod with ``pod_spec`` cannot run on ``node`` now ([] if it can)."""
    problems = []
    conditions = {c["type"]: c for c in node.get("status", {}).get("conditions") or []}
    if conditions.get("Ready", {}).get("status") != "True":
        problems.append("not Ready")
    if node.get("spec", {}).get("unschedulable"):
        problems.append("cordoned (unschedulable)")
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in BLOCKING_TAINT_EFFECTS and not _tolerated(taint, pod_spec.get("tolerations") or []):
            problems.append(f"taint {taint.get('key')}={taint.get('value', '')}:{taint['effect']} not tolerated")
    allocatable = node.get("status", {}).get("allocatable") or {}
    for resource, wanted in _requests(pod_spec).items():
        if resource in allocatable:
            free = parse_quantity(allocatable[resource]) - used.get(resource, 0)
            if wanted > free:
                problems.append(f"insufficient {resource}: requests {wanted}, free {free}")
    return problems


def used_by_node(pods: list[dict], release: str | None = None) -> dict[str, dict]:
    """Requests of running/pending pods per node, the release's own pods excepted (they are replaced)."""
    used: dict[str, dict] = {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        node = pod.get("spec", {}).get("nodeName")
        if not node or pod.get("status", {}).get("phase") in ("Succeeded", "Failed") or \
                release and matches({LABEL_INSTANCE: release, LABEL_MANAGED_BY: MANAGED_BY}, labels):
            continue
        totals = used.setdefault(node, {})
        for resource, amount in _requests(pod["spec"]).items():
            totals[resource] = totals.get(resource, 0) + amount
    return used


def check_targets(nodes: list[dict], node_labels: dict[str, dict], pods: list[dict], release: str,
                  target: dict, manifests: list[dict]) -> list[str]:
    """Names of the nodes ``target`` selects; raises unless every workload fits on at least one of them, and all
    their replicas together (``pack``)."""
    selected = [n for n in nodes if matches(target, node_labels[n["metadata"]["name"]])]
    if not selected:
        raise K8sMoveError(f"node_label {selector_string(target)} matches no node")
    used = used_by_node(pods, release)
    problems = []
    for manifest in manifests:
        if manifest["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod_spec = manifest["spec"]["template"]["spec"]
        verdicts = {n["metadata"]["name"]: node_problems(n, pod_spec, used.get(n["metadata"]["name"], {}))
                    for n in selected}
        if all(verdicts.values()):
            problems.append(f"{manifest['kind']} {manifest['metadata']['name']} fits on no target node: " +
                            "; ".join(f"{node}: {', '.join(p)}" for node, p in verdicts.items()))
    if problems:
        raise K8sMoveError("; ".join(problems))
    # each pod fitting somewhere is not enough: all the replicas must fit at once
    left_over, placed = pack(selected, used, manifests)
    if left_over:
        raise K8sMoveError(_shortfall(target, selected, left_over, placed))
    return sorted(n["metadata"]["name"] for n in selected)


def _shortfall(target: dict, nodes: list[dict], left_over: dict, placed: dict[str, dict]) -> str:
    """What ``pack`` could not place, in words: the pods, their requests, and the room left on each node."""
    wanted = {"cpu": 0, "memory": 0}
    for count, requests in left_over.values():
        for resource in wanted:
            wanted[resource] += count * requests[resource]
    free = {n["metadata"]["name"]: {r: parse_quantity(q) - placed[n["metadata"]["name"]].get(r, 0)
                                    for r, q in (n.get("status", {}).get("allocatable") or {}).items()
                                    if r in wanted} for n in nodes}
    return (f"replicas: the pods do not all fit on the nodes node_label {selector_string(target)} selects "
            f"({', '.join(sorted(free))}), though each fits alone: " +
            ", ".join(f"{count} pod(s) of {ref}" for ref, (count, _) in left_over.items()) +
            f" find no room once the others are placed (they request {_amounts(wanted)}; free then: " +
            "; ".join(f"{node} {_amounts(amounts)}" for node, amounts in sorted(free.items())) +
            "); lower replicas or select more nodes")


def pack(nodes: list[dict], used: dict, manifests: list[dict]) -> tuple[dict, dict[str, dict]]:
    """First-fit packing of every replica of the workloads in ``manifests`` onto ``nodes``, on top of ``used``:
    ({workload: (replicas that find no room, one pod's requests)}, {node: requests in all once packed})."""
    placed = {n["metadata"]["name"]: dict(used.get(n["metadata"]["name"], {})) for n in nodes}
    left_over = {}
    for manifest in manifests:
        if manifest["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod_spec, ref = manifest["spec"]["template"]["spec"], f"{manifest['kind']} {manifest['metadata']['name']}"
        requests = _requests(pod_spec)
        for _ in range(int(manifest["spec"].get("replicas", 1))):
            node = next((n["metadata"]["name"] for n in nodes
                         if not node_problems(n, pod_spec, placed[n["metadata"]["name"]])), None)
            if node is None:
                left_over[ref] = (left_over.get(ref, (0, requests))[0] + 1, requests)
                continue
            for resource, amount in requests.items():
                placed[node][resource] = placed[node].get(resource, 0) + amount
    return left_over, placed


def _amounts(amounts: dict) -> str:
    """{"cpu": 0.35, "memory": 335544320} -> "cpu 350m, memory 320Mi": as a manifest writes them."""
    written = {"cpu": lambda cores: f"{int(cores * 1000)}m", "memory": lambda size: f"{int(size / 2 ** 20)}Mi"}
    return ", ".join(f"{resource} {written[resource](amount)}" for resource, amount in sorted(amounts.items()))


def check_volumes(api: ApiClient, manifests: list[dict], target_nodes: list[str],
                  node_labels: dict[str, dict]) -> None:
    """Raises when a workload's claim is bound to a volume that no target node can mount (node-local storage,
    such as local-path): its data could not follow the move, and the new pod would stay Pending."""
    problems = []
    for manifest in manifests:
        if manifest["kind"] not in ("Deployment", "StatefulSet"):
            continue
        namespace = manifest["metadata"]["namespace"]
        for volume in manifest["spec"]["template"]["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            pvc = claim and kube.get(api, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                           "metadata": {"namespace": namespace, "name": claim}})
            volume_name = (pvc or {}).get("spec", {}).get("volumeName")
            if not volume_name:
                continue   # not bound yet: provisioned where the first pod lands
            pv = kube.get(api, {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume_name}})
            required = ((pv or {}).get("spec", {}).get("nodeAffinity") or {}).get("required")
            if any(node_selector_matches(required, node, node_labels[node]) for node in target_nodes):
                continue
            reachable = sorted(n for n, labels in node_labels.items() if node_selector_matches(required, n, labels))
            problems.append(
                f"{kube.ref(manifest)}: PersistentVolumeClaim {claim} is bound to node-local volume {volume_name} "
                f"(on {', '.join(reachable) or 'no node'}), which no target node ({', '.join(target_nodes)}) can "
                f"mount: its data cannot follow the move; use a network-attached storage class")
    if problems:
        raise K8sMoveError("; ".join(problems))


def check_storage_classes(api: ApiClient, manifests: list[dict]) -> None:
    """Raises when a claim still to be created names a StorageClass the cluster does not have, or names none and
    the cluster has no default one: the API server accepts such a claim, and the DB pod would stay Pending."""
    claims = [m for m in manifests if m["kind"] == "PersistentVolumeClaim" and kube.get(api, m) is None]
    if not claims:
        return   # existing claims keep the volume they have
    classes = kube.list_objects(api, "storage.k8s.io/v1", "StorageClass")
    names = sorted(c["metadata"]["name"] for c in classes)
    has_default = any((c["metadata"].get("annotations") or {}).get(DEFAULT_STORAGE_CLASS_ANNOTATION) == "true"
                      for c in classes)
    for claim in claims:
        wanted = claim["spec"].get("storageClassName")
        if wanted is None and not has_default:
            raise K8sMoveError(f"storage.class: none named and the cluster has no default StorageClass (it has: "
                               f"{', '.join(names) or 'none'}); name one")
        if wanted and wanted not in names:
            raise K8sMoveError(f"storage.class {wanted!r}: the cluster has no StorageClass of that name (it has: "
                               f"{', '.join(names) or 'none'}); the DB volume could never be provisioned")


def _nodes_matching(selector: dict, node_labels: dict[str, dict]) -> set[str]:
    return {name for name, labels in node_labels.items() if matches(selector, labels)}


def check_source_and_target(sources: dict[str, dict], target: dict, node_labels: dict[str, dict]) -> None:
    """Source and target must select disjoint nodes, unless the selector is unchanged (then nothing moves)."""
    target_nodes = _nodes_matching(target, node_labels)
    for component, source in sources.items():
        if source == target:
            continue
        if overlap := _nodes_matching(source, node_labels) & target_nodes:
            raise K8sMoveError(
                f"node_label {selector_string(target)}: source and target are the same node(s) "
                f"{', '.join(sorted(overlap))} ({component} runs on {selector_string(source)} now)")


def recorded_release(api: ApiClient, namespace: str, release: str, components,
                     required: bool = True) -> tuple[dict, dict[str, dict]] | None:
    """(values the release was deployed with, component -> its current nodeSelector).

    A release that does not exist raises, or is None when not ``required`` (a first deploy).
    """
    configmap = kube.get(api, {"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"namespace": namespace, "name": f"{release}-k8smove"}})
    if configmap is None:
        if not required:
            return None
        raise K8sMoveError(f"release {release!r} not found in namespace {namespace!r} (deploy_app it first)")
    values = json.loads(configmap["data"]["values.json"])
    workloads = kube.list_objects(api, "apps/v1", "Deployment", namespace, release_selector(release))
    sources = {}
    serving = int(values.get("db_instance", 0))
    for workload in workloads:
        component = workload["metadata"]["labels"].get(LABEL_COMPONENT)
        # not a DB instance other than the serving one (a standby of a move under way)
        if component in components and is_serving_db(workload, serving):
            sources[component] = workload["spec"]["template"]["spec"].get("nodeSelector") or {}
    if missing := sorted(set(components) - set(sources)):
        raise K8sMoveError(f"release {release!r}: component(s) {', '.join(missing)} not found")
    return values, sources


def check_db_secret(api: ApiClient, namespace: str, release: str, db_instance: int) -> None:
    """An existing release's DB password is in its Secret and in the database's data only: the apply re-creates a
    missing Secret with a new password, which the data does not know, so the App would be locked out."""
    name = f"{release}-db"
    if kube.get(api, {"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": namespace, "name": name}}):
        return
    raise K8sMoveError(
        f"release {namespace}/{release}: its DB Secret {namespace}/{name} is missing (deleted by hand?); a move would "
        f"create it with a new password the database does not know, locking the App out of its data. Restore it "
        f"first: from a backup (kubectl apply -f), or with the password the database still has (kubectl -n "
        f"{namespace} create secret generic {name} --from-literal=password=<password>); if that is lost, set a new "
        f"one in the database (kubectl -n {namespace} exec deploy/{instance_name(release, db_instance)} -- psql -U "
        f"demo -d demo -c \"ALTER ROLE demo PASSWORD '<password>'\") and create the Secret with it")


def check_placement(api: ApiClient, manifests: list[dict], values: dict, sources: dict[str, dict],
                    label_nodes: dict, avoid_nodes=(), snapshot: tuple[list, list] | None = None) -> list[str]:
    """Every check of where ``manifests`` would run; returns the target nodes (``avoid_nodes`` never are).

    ``snapshot``: (nodes, pods) already listed by the caller (a maintenance plan checks many releases against one
    listing); listed here otherwise."""
    check_selector("node_label", values["node_label"])
    nodes, pods = snapshot or (kube.list_objects(api, "v1", "Node"), kube.list_objects(api, "v1", "Pod"))
    node_labels = labels_after_changes(nodes, label_nodes)
    candidates = [n for n in nodes if n["metadata"]["name"] not in set(avoid_nodes)]
    if avoid_nodes and not any(matches(values["node_label"], node_labels[n["metadata"]["name"]]) for n in candidates):
        raise K8sMoveError(f"node_label {selector_string(values['node_label'])} matches no node outside "
                           f"{', '.join(sorted(avoid_nodes))}")
    target_nodes = check_targets(candidates, node_labels, pods, values["release"], values["node_label"], manifests)
    check_source_and_target(sources, values["node_label"], node_labels)
    check_volumes(api, manifests, target_nodes, node_labels)
    check_storage_classes(api, manifests)
    return target_nodes
