"""The DaemonSet controller: one pod a node, pinned by node affinity, following node changes, rolling
template changes node by node; driven through the Store with every controller running."""
from __future__ import annotations

from kubesim.resources import DAEMONSETS, EVENTS, NODES, PODS

from controller_harness import cluster, wait_for  # noqa: F401  (cluster: the fixture)


def daemonset(name: str, image: str = "agent:1", **spec) -> dict:
    return {"metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "agent", "image": image}]}}, **spec}}


def daemon_pods(store, name: str) -> dict[str, list[dict]]:
    """node -> the DaemonSet's pods there that are not terminating."""
    out: dict[str, list[dict]] = {}
    for pod in store.list(PODS, "kube-system"):
        if pod["metadata"]["labels"].get("app") == name and not pod["metadata"].get("deletionTimestamp"):
            out.setdefault(pod["spec"].get("nodeName") or "", []).append(pod)
    return out


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def settled(store, name: str, nodes: list[str]) -> bool:
    pods = daemon_pods(store, name)
    status = store.get(DAEMONSETS, "kube-system", name).get("status") or {}
    return sorted(pods) == nodes and all(len(p) == 1 and ready(p[0]) for p in pods.values()) and \
        status.get("numberAvailable") == status.get("desiredNumberScheduled") == len(nodes)


def test_one_pod_a_node_following_the_nodes(cluster):
    store, manager = cluster
    store.create(DAEMONSETS, daemonset("agent"))
    wait_for(lambda: settled(store, "agent", ["node1", "node2"]), what="a pod on each node")
    pod = daemon_pods(store, "agent")["node1"][0]
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                               "values": ["node1"]}]}]}
    assert {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"} \
        in pod["spec"]["tolerations"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    status = store.get(DAEMONSETS, "kube-system", "agent")["status"]
    assert status == {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0,
                      "numberReady": 2, "numberAvailable": 2, "updatedNumberScheduled": 2, "observedGeneration": 1}

    # a new node gets one; a cordoned node keeps its pod and would get one (DaemonSets tolerate cordons)
    store.mutate(NODES, None, "node2", lambda n: n["spec"].update(unschedulable=True))
    manager.add_node("node3")
    wait_for(lambda: settled(store, "agent", ["node1", "node2", "node3"]), what="the new node's pod")

    # a NoExecute taint the pods do not tolerate sends them away; a NoSchedule one only keeps new pods out
    store.mutate(NODES, None, "node3", lambda n: n["spec"].update(
        taints=[{"key": "dedicated", "value": "db", "effect": "NoExecute"}]))
    wait_for(lambda: settled(store, "agent", ["node1", "node2"]), what="the tainted node emptied")
    assert store.get(DAEMONSETS, "kube-system", "agent")["status"]["desiredNumberScheduled"] == 2
    store.mutate(NODES, None, "node1", lambda n: n["spec"].update(
        taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]))
    wait_for(lambda: store.get(DAEMONSETS, "kube-system", "agent")["status"]["desiredNumberScheduled"] == 1,
             what="node1 no longer counted")
    assert sorted(daemon_pods(store, "agent")) == ["node1", "node2"]   # the running pod stays
    reasons = {e["reason"] for e in store.list(EVENTS, "kube-system")
               if e["involvedObject"]["kind"] == "DaemonSet"}
    assert reasons == {"SuccessfulCreate", "SuccessfulDelete"}


def test_node_selector_limits_the_nodes(cluster):
    store, _ = cluster
    store.mutate(NODES, None, "node2", lambda n: n["metadata"]["labels"].update(disk="ssd"))
    ds = daemonset("ssd-agent")
    ds["spec"]["template"]["spec"]["nodeSelector"] = {"disk": "ssd"}
    store.create(DAEMONSETS, ds)
    wait_for(lambda: settled(store, "ssd-agent", ["node2"]), what="the ssd node's pod")
    store.mutate(NODES, None, "node2", lambda n: n["metadata"]["labels"].pop("disk"))
    wait_for(lambda: daemon_pods(store, "ssd-agent") == {}, what="the misscheduled pod gone")


def test_rolling_update_replaces_one_node_at_a_time(cluster):
    store, manager = cluster
    manager.add_node("node3")
    store.create(DAEMONSETS, daemonset("agent"))
    wait_for(lambda: settled(store, "agent", ["node1", "node2", "node3"]), what="first rollout")
    serving = {node: {pods[0]["metadata"]["name"]} for node, pods in daemon_pods(store, "agent").items()}
    watch = store.watch(PODS, "kube-system", since_rv=store.resource_version)
    store.mutate(DAEMONSETS, "kube-system", "agent",
                 lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="agent:2"))

    def rolled() -> bool:
        pods = daemon_pods(store, "agent")
        status = store.get(DAEMONSETS, "kube-system", "agent")["status"]
        return settled(store, "agent", ["node1", "node2", "node3"]) and status["updatedNumberScheduled"] == 3 \
            and all(p[0]["spec"]["containers"][0]["image"] == "agent:2" for p in pods.values())
    wait_for(rolled, what="the new template on every node")
    # maxUnavailable 1: never two nodes without a Ready daemon pod at once, replayed from the watch
    fewest, replaced = 3, 0
    while watch.pending():
        event = watch.next(timeout=0)
        pod, node = event.object, event.object["spec"].get("nodeName")
        if not node:
            continue
        name = pod["metadata"]["name"]
        serving[node].discard(name)
        if event.type != "DELETED" and ready(pod) and not pod["metadata"].get("deletionTimestamp"):
            serving[node].add(name)
        replaced += event.type == "DELETED"
        fewest = min(fewest, sum(1 for names in serving.values() if names))
    watch.close()
    assert replaced == 3 and fewest == 2
