"""Label syntax, selector matching and the node checks Preflight makes (pure functions)."""
from __future__ import annotations

import re

import pytest

from k8smove import K8sMoveError
from k8smove.labels import check_selector, label_problem, matches, node_selector_matches, split_label_changes
from k8smove.preflight import (
    check_address_free,
    check_cluster_address,
    check_conf_keys,
    check_source_and_target,
    check_targets,
    external_ip_ranges,
    labels_after_changes,
    node_problems,
)


def node(name, labels=None, ready=True, unschedulable=False, taints=None, cpu="4", memory="8Gi"):
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"unschedulable": unschedulable, "taints": taints or []},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "allocatable": {"cpu": cpu, "memory": memory}}}


def workload(name="demo-app", cpu="100m", memory="64Mi", tolerations=None):
    return {"kind": "Deployment", "metadata": {"name": name}, "spec": {"template": {"spec": {
        "tolerations": tolerations or [],
        "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}}}


@pytest.mark.parametrize("key,value,ok", [
    ("demo", "node1", True), ("example.com/zone", "a-b_c.d", True), ("demo", "", True),
    ("demo", "x\n  hostNetwork: true", False), ("-bad", "v", False), ("a/b/c", "v", False),
    ("demo", "a" * 64, False), ("demo", "{{ 7 }}", False), ("Example.com/zone", "v", False),
    ("demo", "node1\n", False), ("demo\n", "node1", False),   # valid but for a trailing newline
])
def test_label_syntax(key, value, ok):
    assert (label_problem(key, value) is None) is ok


def test_selector_must_be_non_empty_and_valid():
    with pytest.raises(K8sMoveError, match="node_label: must be a non-empty map"):
        check_selector("node_label", {})
    with pytest.raises(K8sMoveError, match="node_label: invalid label value"):
        check_selector("node_label", {"demo": "bad value"})


def test_split_label_changes_reads_kubectl_removal_syntax():
    assert split_label_changes("f", {"a": "1", "b-": None}) == ({"a": "1"}, ["b"])


def test_matches():
    assert matches({"demo": "node1"}, {"demo": "node1", "x": "y"})
    assert not matches({"demo": "node1"}, {"demo": "node2"})
    assert not matches({"demo": "node1"}, None)


LOCAL_PV_AFFINITY = {"nodeSelectorTerms": [{"matchExpressions": [
    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node1"]}]}]}


@pytest.mark.parametrize("selector, name, labels, expected", [
    (LOCAL_PV_AFFINITY, "node1", {"kubernetes.io/hostname": "node1"}, True),
    (LOCAL_PV_AFFINITY, "node2", {"kubernetes.io/hostname": "node2"}, False),
    (None, "node2", {}, True),   # no affinity: a network-attached volume
    ({"nodeSelectorTerms": [{}]}, "node1", {}, False),   # an empty term matches nothing
    ({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]},
                            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]},
                                                  {"key": "disk", "operator": "Exists"}]}]},
     "node1", {"zone": "b", "disk": "ssd"}, True),   # terms are ORed, expressions ANDed
    ({"nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}]}]},
     "node1", {"gen": "2"}, False),
])
def test_node_selector_matches(selector, name, labels, expected):
    assert node_selector_matches(selector, name, labels) is expected


def test_unknown_conf_keys_are_named():
    with pytest.raises(K8sMoveError, match="unknown conf key.*node_lable"):
        check_conf_keys({"node_lable": {}}, ["node_label"])


def test_labels_after_changes_and_unknown_node():
    nodes = [node("node1", {"old": "x"}), node("node2")]
    assert labels_after_changes(nodes, {"node1": {"demo": "node1", "old-": None}}) == {
        "node1": {"demo": "node1"}, "node2": {}}
    with pytest.raises(K8sMoveError, match="node 'node3' not found"):
        labels_after_changes(nodes, {"node3": {"demo": "x"}})


@pytest.mark.parametrize("n,problem", [
    (node("n", ready=False), "not Ready"),
    (node("n", unschedulable=True), "cordoned"),
    (node("n", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]), "taint dedicated=gpu"),
    (node("n", cpu="50m"), "insufficient cpu"),
    (node("n", memory="10Mi"), "insufficient memory"),
])
def test_node_problems(n, problem):
    assert any(problem in p for p in node_problems(n, workload()["spec"]["template"]["spec"], {}))


def test_tolerated_taint_and_prefer_no_schedule_are_fine():
    spec = workload(tolerations=[{"key": "dedicated", "operator": "Exists"}])["spec"]["template"]["spec"]
    tainted = node("n", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                                {"key": "soft", "effect": "PreferNoSchedule"}])
    assert node_problems(tainted, spec, {}) == []


def test_check_targets_counts_other_pods_but_not_the_release():
    nodes = [node("node1", {"demo": "node1"}, cpu="1")]
    labels = {"node1": {"demo": "node1"}}
    other = {"metadata": {"labels": {}}, "spec": {"nodeName": "node1", "containers": [
        {"resources": {"requests": {"cpu": "950m"}}}]}, "status": {"phase": "Running"}}
    ours = {"metadata": {"labels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/managed-by": "k8smove"}},
            "spec": {"nodeName": "node1", "containers": [{"resources": {"requests": {"cpu": "900m"}}}]},
            "status": {"phase": "Running"}}
    assert check_targets(nodes, labels, [ours], "demo", {"demo": "node1"}, [workload()]) == ["node1"]
    with pytest.raises(K8sMoveError, match="demo-app fits on no target node: node1: insufficient cpu"):
        check_targets(nodes, labels, [other], "demo", {"demo": "node1"}, [workload()])
    with pytest.raises(K8sMoveError, match="node_label demo=node9 matches no node"):
        check_targets(nodes, labels, [], "demo", {"demo": "node9"}, [workload()])


def test_check_targets_packs_every_replica_together():
    """Each pod fits on node1 alone; three App replicas and the DB together do not."""
    nodes, labels = [node("node1", {"demo": "node1"}, cpu="500m", memory="1Gi")], {"node1": {"demo": "node1"}}
    app, db = {**workload(), "spec": {**workload()["spec"], "replicas": 3}}, workload("demo-db", cpu="250m")
    assert check_targets(nodes, labels, [], "demo", {"demo": "node1"}, [db, workload()]) == ["node1"]
    with pytest.raises(K8sMoveError, match=re.escape(
            "replicas: the pods do not all fit on the nodes node_label demo=node1 selects (node1), though each fits "
            "alone: 1 pod(s) of Deployment demo-app find no room once the others are placed (they request cpu "
            "100m, memory 64Mi; free then: node1 cpu 50m, memory 832Mi); lower replicas or select more nodes")):
        check_targets(nodes, labels, [], "demo", {"demo": "node1"}, [db, app])
    # two nodes have room for all of them: first fit spreads what one cannot hold
    nodes.append(node("node2", {"demo": "node1"}, cpu="500m", memory="1Gi"))
    labels["node2"] = {"demo": "node1"}
    assert check_targets(nodes, labels, [], "demo", {"demo": "node1"}, [db, app]) == ["node1", "node2"]


@pytest.mark.parametrize("address,ranges,ok", [
    ("192.0.2.7", "", True),                     # a node's InternalIP
    ("198.51.100.9", "", True),                  # a node's ExternalIP
    ("10.192.3.4", "10.192.0.0/12", True),       # in a declared range
    ("10.200.0.1", " 203.0.113.0/24 , 10.192.0.0/12", True),
    ("10.208.0.1", "10.192.0.0/12", False),      # neither
    ("203.0.113.5", "", False),
])
def test_an_external_ip_must_be_an_address_of_the_cluster(address, ranges, ok):
    nodes = [{**node("node1"), "status": {"addresses": [
        {"type": "InternalIP", "address": "192.0.2.7"}, {"type": "ExternalIP", "address": "198.51.100.9"},
        {"type": "Hostname", "address": "203.0.113.5"}]}}]
    if ok:
        check_cluster_address(address, nodes, ranges)
    else:
        with pytest.raises(K8sMoveError, match=rf"external_ip {re.escape(address)}: not an address of this cluster"):
            check_cluster_address(address, nodes, ranges)


def test_external_ip_ranges_must_be_cidrs():
    with pytest.raises(K8sMoveError, match=r"\[k8smove\] external_ip_ranges: '10.192.0.0/33' is not an address "
                                           r"range"):
        external_ip_ranges("10.192.0.0/12,10.192.0.0/33")


def test_an_address_and_port_another_service_claims_is_refused():
    def service(namespace, name, labels, ip, port, protocol="TCP", ingress=False):
        where = {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}} if ingress else {}
        return {"metadata": {"namespace": namespace, "name": name, "labels": labels},
                "spec": {"externalIPs": [] if ingress else [ip], "ports": [{"port": port, "protocol": protocol}]},
                **where}
    ours = {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/managed-by": "k8smove"}
    check_address_free("10.192.0.1", 8080, [service("default", "demo", ours, "10.192.0.1", 8080),   # its own
                                            service("other", "x", {}, "10.192.0.1", 8081),
                                            service("other", "u", {}, "10.192.0.1", 8080, protocol="UDP")],
                       "default", "demo")
    for claimant in (service("default", "demo", ours, "10.192.0.1", 8080), service("b", "lb", {}, "10.192.0.1", 8080,
                                                                                  ingress=True)):
        ref = f"{claimant['metadata']['namespace']}/{claimant['metadata']['name']}"
        with pytest.raises(K8sMoveError, match=f"external_ip 10.192.0.1 port 8080: already claimed by Service {ref}"):
            check_address_free("10.192.0.1", 8080, [claimant], "default", "demo2")


def test_source_and_target():
    labels = {"node1": {"demo": "node1", "kubernetes.io/hostname": "node1"}, "node2": {"demo": "node2"}}
    check_source_and_target({"app": {"demo": "node1"}}, {"demo": "node2"}, labels)
    check_source_and_target({"app": {"demo": "node1"}}, {"demo": "node1"}, labels)   # unchanged: no-op
    with pytest.raises(K8sMoveError, match="source and target are the same node.*node1"):
        check_source_and_target({"app": {"demo": "node1"}}, {"kubernetes.io/hostname": "node1"}, labels)
