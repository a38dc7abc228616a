"""Helpers for tests that deploy the demo release on kubesim through the real clients."""
from __future__ import annotations

import asyncio
import itertools
import os

from k8smove.params import DEPLOY_PARAMS
from kubesim.addresses import external_address

_addresses = itertools.count(1)
RENDER_KEYS = ("namespace", "release", "node_label", "external_ip", "port", "images", "replicas", "storage")
LABEL_NODES = {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}}


def unique_external_ip() -> str:
    """An external address (kubesim.addresses.EXTERNAL_RANGE: an API server refuses loopback ones) no other test
    (or agent on this machine) is using, so :8080 is free on it."""
    return external_address((1000 + os.getpid() % 1000) * 256 + next(_addresses) % 250 + 1)


def workload_manifest(kind: str, name: str, labels: dict, namespace: str | None = None, **spec) -> dict:
    """A one-replica nginx Deployment or StatefulSet carrying ``labels``: a workload the maintenance DAGs find on a
    node. The StatefulSet mounts its claim "data" (1Gi of the network-attached class "standard") at /data."""
    template = {"metadata": {"labels": {"app": name, **labels}}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}}
    if kind == "StatefulSet":
        template["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec = {"serviceName": name, "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
            "storageClassName": "standard", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}], **spec}
    metadata = {"name": name, "labels": labels, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": metadata,
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template, **spec}}


def deploy_values(**overrides) -> dict:
    values = {key: DEPLOY_PARAMS[key]["default"] for key in RENDER_KEYS}
    # node_label has no default (a re-deploy keeps its placement): these releases start on node1
    return {**values, "node_label": {"demo": "node1"}, "external_ip": unique_external_ip(), **overrides}


def wait(kubeconfig: str, namespace: str, release: str, workloads: list[dict], timeout: float) -> dict:
    """k8smove.watching.wait_for_rollout over a kubernetes_asyncio client from the kubeconfig."""
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import ApiClient, Configuration

    from k8smove.watching import wait_for_rollout

    async def run():
        configuration = Configuration()
        await config.load_kube_config(kubeconfig, client_configuration=configuration)
        async with ApiClient(configuration) as api:
            return await wait_for_rollout(api, namespace, release, workloads, timeout)
    return asyncio.run(run())


def pods_by_component(kube_client, release: str = "demo", namespace: str = "default") -> dict[str, list[str]]:
    """component -> nodes of its pods that are not terminating."""
    from kubernetes.client import CoreV1Api

    placement: dict[str, list[str]] = {}
    for pod in CoreV1Api(kube_client).list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={release}").items:
        if pod.metadata.deletion_timestamp is None:
            placement.setdefault(pod.metadata.labels["app.kubernetes.io/component"], []).append(pod.spec.node_name)
    return {component: sorted(nodes) for component, nodes in placement.items()}


def deployed(cluster, kube_client, **overrides) -> dict:
    """A release on node1, put there by the move engine itself; returns its deploy values."""
    from k8smove.engine import begin, commit, plan_release
    from k8smove.nodes import label_nodes
    from k8smove.rollout import workloads_in

    label_nodes(kube_client, LABEL_NODES)
    values = deploy_values(**overrides)
    settings = {k: v for k, v in values.items() if k not in ("namespace", "release", "node_label")}
    plan = plan_release(kube_client, "default", "demo", values["node_label"], settings=settings)
    begin(kube_client, plan, "deploy_app/first", 60)
    assert wait(cluster.kubeconfig_path, "default", "demo", workloads_in(plan["manifests"]), 60)["status"] == "success"
    commit(kube_client, plan, "deploy_app/first")
    return values
