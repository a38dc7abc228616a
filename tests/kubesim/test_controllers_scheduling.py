"""Scheduler and kubelet: upstream-worded FailedScheduling, cordon/taints/resources, node registration,
lease heartbeats, pod status shape, readiness delay, graceful termination, NotReady nodes."""
from __future__ import annotations

import time

import pytest

from kubesim.resources import EVENTS, LEASES, NODES, PODS
from kubesim.runtime import SimulatedRuntime

from controller_harness import fast_config, seeded_store, start_manager, wait_for


class NodeFaults:
    """The two fault-registry methods the controllers ask about."""

    def __init__(self):
        self.down = set()

    def node_not_ready(self, node):
        return node in self.down

    def extra_startup_seconds(self, node):
        return 0.0


@pytest.fixture
def faults():
    return NodeFaults()


@pytest.fixture
def cluster(tmp_path, faults):
    store = seeded_store()
    manager = start_manager(store, fast_config(tmp_path), faults=faults)
    wait_for(lambda: len(store.list(NODES)) == 2, what="nodes")
    yield store, manager
    manager.stop()


def pod(name, **spec):
    body = {"metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": dict({"containers": [{"name": "c", "image": "demo/app:1"}]}, **spec)}
    return body


def phase(store, name):
    return store.get(PODS, "default", name).get("status", {}).get("phase")


def is_ready(store, name):
    p = store.find(PODS, "default", name)
    return p is not None and any(c["type"] == "Ready" and c["status"] == "True"
                                 for c in p.get("status", {}).get("conditions", []))


def failed_scheduling(store, name):
    return [e["message"] for e in store.list(EVENTS, "default")
            if e["reason"] == "FailedScheduling" and e["involvedObject"]["name"] == name]


def test_node_registration_and_lease(cluster):
    store, _ = cluster
    node = store.get(NODES, None, "node1")
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node1"
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.1.1"}
    assert node["status"]["capacity"]["pods"] == "110"
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "KubeletReady", "kubelet is posting ready status")
    # the kubelet creates its Lease right after registering, as upstream (asynchronously to the test)
    lease = wait_for(lambda: store.find(LEASES, "kube-node-lease", "node1"), what="the node's Lease")
    first = lease["spec"]["renewTime"]
    wait_for(lambda: store.get(LEASES, "kube-node-lease", "node1")["spec"]["renewTime"] != first, what="lease renewal")


def test_selector_matching_no_ready_schedulable_node_stays_pending_with_upstream_message(cluster):
    store, _ = cluster
    store.mutate(NODES, None, "node2", lambda n: n["spec"].update(unschedulable=True))
    store.create(PODS, pod("p", nodeSelector={"disk": "ssd"}))
    expected = ("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                "1 node(s) were unschedulable. preemption: 0/2 nodes are available: "
                "2 Preemption is not helpful for scheduling.")
    wait_for(lambda: expected in failed_scheduling(store, "p"), what="FailedScheduling event")
    p = store.get(PODS, "default", "p")
    assert p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")
    scheduled = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == ("False", "Unschedulable", expected)
    # the cordon shows as the upstream taint, and uncordoning plus labelling lets the pod in
    wait_for(lambda: any(t["key"] == "node.kubernetes.io/unschedulable"
                         for t in store.get(NODES, None, "node2")["spec"].get("taints", [])), what="cordon taint")
    store.mutate(NODES, None, "node2", lambda n: (n["spec"].pop("unschedulable"),
                                                    n["metadata"]["labels"].update(disk="ssd")))
    wait_for(lambda: store.get(PODS, "default", "p")["spec"].get("nodeName") == "node2", what="bound after uncordon")
    wait_for(lambda: is_ready(store, "p"), what="ready")


def test_resources_and_taints_are_filtered_with_upstream_reasons(cluster):
    store, _ = cluster
    store.mutate(NODES, None, "node1", lambda n: n["spec"].update(taints=[{"key": "dedicated", "value": "db",
                                                                          "effect": "NoSchedule"}]))
    big = pod("big", containers=[{"name": "c", "image": "x", "resources": {"requests": {"cpu": "5", "memory": "1Gi"}}}])
    store.create(PODS, big)
    expected = ("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}. "
                "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, "
                "1 Preemption is not helpful for scheduling.")
    wait_for(lambda: expected in failed_scheduling(store, "big"), what="FailedScheduling")
    store.create(PODS, pod("tolerant", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "db",
                                                     "effect": "NoSchedule"}],
                           nodeSelector={"kubernetes.io/hostname": "node1"}))
    wait_for(lambda: store.get(PODS, "default", "tolerant")["spec"].get("nodeName") == "node1", what="tolerated")


def test_required_node_affinity_operators(cluster):
    store, _ = cluster
    store.mutate(NODES, None, "node2", lambda n: n["metadata"]["labels"].update(gen="5"))
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]},
                              {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node1"]}]}]}}}
    store.create(PODS, pod("aff", affinity=affinity))
    wait_for(lambda: store.get(PODS, "default", "aff")["spec"].get("nodeName") == "node2", what="affinity")
    by_name = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node1"]}]}]}}}
    store.create(PODS, pod("field", affinity=by_name))
    wait_for(lambda: store.get(PODS, "default", "field")["spec"].get("nodeName") == "node1", what="matchFields")


def test_preferred_node_affinity_outweighs_free_resources_as_kube_schedulers_default_weights_do(cluster):
    store, _ = cluster
    on_node2 = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node2"]}]}]}}}
    for name in ("filler-1", "filler-2"):
        store.create(PODS, pod(name, affinity=on_node2))
        wait_for(lambda: store.get(PODS, "default", name)["spec"].get("nodeName") == "node2", what=name)
    store.create(PODS, pod("plain"))   # without a preference the emptier node wins
    wait_for(lambda: store.get(PODS, "default", "plain")["spec"].get("nodeName") == "node1", what="least allocated")
    avoid_node1 = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node1"]}]}}]}}
    store.create(PODS, pod("prefers", affinity=avoid_node1))
    # node2 still has less room (two pods against one), but the preference weighs more
    wait_for(lambda: store.get(PODS, "default", "prefers")["spec"].get("nodeName") == "node2", what="preference")


def test_pod_status_readiness_delay_and_graceful_termination(cluster):
    store, _ = cluster
    body = pod("web", containers=[{"name": "c", "image": "demo/app:1",
                                   "readinessProbe": {"initialDelaySeconds": 1, "httpGet": {"port": 80}}}])
    store.create(PODS, body)
    wait_for(lambda: phase(store, "web") == "Running", what="running")
    started = time.monotonic()
    p = store.get(PODS, "default", "web")
    assert p["status"]["podIP"].startswith("127.10") and p["status"]["hostIP"].startswith("127.0.1.")
    cs = p["status"]["containerStatuses"][0]
    assert "running" in cs["state"] and cs["restartCount"] == 0 and cs["containerID"].startswith("kubesim://")
    assert not is_ready(store, "web")
    wait_for(lambda: is_ready(store, "web"), what="ready after initialDelaySeconds")
    assert time.monotonic() - started >= 0.5
    store.delete(PODS, "default", "web")
    p = store.find(PODS, "default", "web")
    assert p is None or p["metadata"].get("deletionTimestamp")
    wait_for(lambda: store.find(PODS, "default", "web") is None, what="removal after grace")
    reasons = [e["reason"] for e in store.list(EVENTS, "default") if e["involvedObject"]["name"] == "web"]
    for reason in ("Scheduled", "Pulling", "Pulled", "Created", "Started", "Killing"):
        assert reason in reasons


def test_pod_ips_are_unique_per_node(cluster):
    store, _ = cluster
    for i in range(6):
        store.create(PODS, pod(f"p{i}", nodeSelector={"kubernetes.io/hostname": "node1"}))
    wait_for(lambda: all(phase(store, f"p{i}") == "Running" for i in range(6)), what="running")
    ips = [store.get(PODS, "default", f"p{i}")["status"]["podIP"] for i in range(6)]
    assert len(set(ips)) == 6 and all(ip.startswith("127.101.") for ip in ips)


def test_not_ready_node_is_tainted_and_its_pods_marked_not_ready(cluster, faults):
    store, _ = cluster
    store.create(PODS, pod("victim", nodeSelector={"kubernetes.io/hostname": "node1"},
                           tolerations=[{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                         "effect": "NoExecute", "tolerationSeconds": 1}]))
    wait_for(lambda: is_ready(store, "victim"), what="ready")
    faults.down.add("node1")
    wait_for(lambda: not is_ready(store, "victim"), timeout=5, what="pod marked not ready")
    node = store.get(NODES, None, "node1")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["message"]) == ("Unknown", "Kubelet stopped posting node status.")
    wait_for(lambda: {(t["key"], t["effect"]) for t in store.get(NODES, None, "node1")["spec"].get("taints", [])} ==
             {("node.kubernetes.io/unreachable", "NoSchedule"), ("node.kubernetes.io/unreachable", "NoExecute")},
             what="unreachable taints")
    wait_for(lambda: (store.find(PODS, "default", "victim") or {}).get("metadata", {}).get("deletionTimestamp"),
             timeout=5, what="eviction after tolerationSeconds")
    faults.down.clear()
    wait_for(lambda: not store.get(NODES, None, "node1")["spec"].get("taints"), timeout=5, what="taints removed")
    wait_for(lambda: store.find(PODS, "default", "victim") is None, timeout=5, what="evicted pod removed")


def test_add_node_at_runtime(cluster):
    store, manager = cluster
    manager.add_node("node3")
    wait_for(lambda: store.find(NODES, None, "node3") is not None, what="node3 registered")
    assert store.get(NODES, None, "node3")["status"]["addresses"][0]["address"] == "127.0.1.3"
    store.create(PODS, pod("on3", nodeSelector={"kubernetes.io/hostname": "node3"}))
    wait_for(lambda: is_ready(store, "on3"), what="pod on node3 ready")
    assert store.get(PODS, "default", "on3")["status"]["podIP"].startswith("127.103.")


class FailingPulls(SimulatedRuntime):
    def pull(self, pod, node):
        return 'rpc error: code = NotFound desc = failed to pull and unpack image "nope:1"'


def test_image_pull_failure_shows_err_image_pull_then_backoff(tmp_path):
    store = seeded_store()
    manager = start_manager(store, fast_config(tmp_path, image_pull_backoff_seconds=0.2), runtime=FailingPulls())
    try:
        store.create(PODS, pod("bad", containers=[{"name": "c", "image": "nope:1"}]))
        waiting = lambda: ((store.get(PODS, "default", "bad").get("status", {}).get("containerStatuses") or [{}])[0]
                           .get("state", {}).get("waiting", {}).get("reason"))
        wait_for(lambda: waiting() == "ErrImagePull", what="ErrImagePull")
        wait_for(lambda: waiting() == "ImagePullBackOff", what="ImagePullBackOff")
        messages = [e["message"] for e in store.list(EVENTS, "default") if e["reason"] == "Failed"]
        assert any(m.startswith('Failed to pull image "nope:1": rpc error') for m in messages)
        assert "Error: ImagePullBackOff" in messages
    finally:
        manager.stop()


def test_stop_stops_every_pod_and_thread(tmp_path):
    import threading
    store = seeded_store()
    runtime = SimulatedRuntime()
    before = set(threading.enumerate())
    manager = start_manager(store, fast_config(tmp_path), runtime=runtime)
    for i in range(4):
        store.create(PODS, pod(f"p{i}"))
    wait_for(lambda: all(is_ready(store, f"p{i}") for i in range(4)), what="pods ready")
    assert len(runtime._pods) == 4
    manager.stop()
    assert runtime._pods == {}
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leftover, leftover


class CrashingRuntime(SimulatedRuntime):
    """Containers of pods labelled crash=yes exit with code 1 and back off, as the data plane reports it."""

    def crash(self, uid):
        from kubesim.runtime import ContainerStatus
        sandbox = self._pods[uid]
        for name, cs in sandbox.containers.items():
            sandbox.containers[name] = ContainerStatus(name, running=False, ready=False, exit_code=1,
                                                       reason="CrashLoopBackOff", restart_count=cs.restart_count + 1,
                                                       message=f"back-off 10s restarting failed container={name}")


def test_crashed_container_shows_crash_loop_back_off(tmp_path):
    store = seeded_store()
    runtime = CrashingRuntime()
    manager = start_manager(store, fast_config(tmp_path), runtime=runtime)
    try:
        store.create(PODS, pod("crashy"))
        wait_for(lambda: is_ready(store, "crashy"), what="ready")
        runtime.crash(store.get(PODS, "default", "crashy")["metadata"]["uid"])
        wait_for(lambda: not is_ready(store, "crashy"), what="not ready after the crash")
        cs = store.get(PODS, "default", "crashy")["status"]["containerStatuses"][0]
        assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff" and cs["restartCount"] == 1
        assert cs["lastState"]["terminated"]["exitCode"] == 1 and cs["lastState"]["terminated"]["reason"] == "Error"
        assert store.get(PODS, "default", "crashy")["status"]["phase"] == "Running"
        wait_for(lambda: any(e["reason"] == "BackOff" and e["message"].startswith("Back-off restarting failed container c")
                             for e in store.list(EVENTS, "default")), what="BackOff event")
    finally:
        manager.stop()


def running_web_pod_stopped_on_a_thread(cluster):
    """Pod "web" Running, on kubelets whose runtime stops pods on a thread, as the process runtime does; the store."""
    store, manager = cluster
    for kubelet in manager.kubelets.by_node.values():
        kubelet.runtime.stop_blocks = True
    store.create(PODS, pod("web"))
    wait_for(lambda: phase(store, "web") == "Running", what="running")
    return store


def test_a_pod_whose_removal_failed_is_removed_once_the_api_answers_again(cluster):
    """The kubelet stops a deleted pod's containers on a thread of its own (a runtime whose stop blocks), then removes
    the pod; if that removal fails (the API server restarting), the pod must not stay Terminating for ever."""
    store = running_web_pod_stopped_on_a_thread(cluster)
    remove, failed = store.remove, []

    def refused_once(*args, **kwargs):
        if not failed:
            failed.append(args)
            raise ConnectionRefusedError(111, "Connection refused")
        return remove(*args, **kwargs)
    store.remove = refused_once
    store.delete(PODS, "default", "web")
    wait_for(lambda: store.find(PODS, "default", "web") is None, what="removal after a refused one")
    assert failed and failed[0][1:] == ("default", "web")


def test_a_deleted_pod_stops_even_when_its_terminating_status_cannot_be_written(cluster):
    """The kubelet writes a deleted pod's not-ready status before stopping it; when that write fails (the API server
    restarting) the retried sync must terminate it again: marked terminating before the write, the retry did nothing
    and the pod never stopped (a DB switchover's fence then waited for the old primary for ever)."""
    store = running_web_pod_stopped_on_a_thread(cluster)
    update, failed = store.update, []

    def refused_once_when_deleting(resource, obj, *args, **kwargs):
        current = store.find(PODS, "default", "web")
        if resource is PODS and not failed and current and current["metadata"].get("deletionTimestamp"):
            failed.append(obj["metadata"]["name"])
            raise ConnectionRefusedError(111, "Connection refused")
        return update(resource, obj, *args, **kwargs)
    store.update = refused_once_when_deleting
    store.delete(PODS, "default", "web")
    wait_for(lambda: store.find(PODS, "default", "web") is None, what="the pod stopped and removed after a refused "
                                                                        "status write")
    assert failed == ["web"]
