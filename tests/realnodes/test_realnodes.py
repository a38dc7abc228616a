"""Two kubesim nodes under the real kube-apiserver, kube-scheduler and kube-controller-manager: they register
and stay Ready with renewed Leases, run a Deployment the real scheduler places and the real deployment
controller rolls out, stop a deleted pod's processes, are held to their own objects by the Node authorizer and
NodeRestriction, and a node-not-ready fault becomes the real node-lifecycle controller's taint."""
from __future__ import annotations

import os
import time
import urllib.request

import pytest

from kubesim import errors
from kubesim.resources import SECRETS
from tests.kubesim.dataplane_support import alive_in, pod_processes
from waiting import wait_for

from kubectl_support import kubectl_runner
from realnodes_support import REAL

pytestmark = pytest.mark.slow

NODES = REAL["nodes"]
DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: nginx
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
        env:
        - name: GREETING  # read by the kubelet with its node identity: the Node authorizer must allow it
          valueFrom: {secretKeyRef: {name: web-secret, key: greeting}}
"""


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in obj["status"].get("conditions") or () if c["type"] == type_), {})


def web_pods(kubectl) -> list[dict]:
    return [p for p in kubectl.json("get", "pods", "-n", "default", "-l", "app=web")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def ready_web_pods(kubectl, count: int = 2) -> list[dict]:
    pods = web_pods(kubectl)
    ready = [p for p in pods if condition(p, "Ready").get("status") == "True"]
    return ready if len(ready) == count == len(pods) else []


def http_get(ip: str, port: int) -> int:
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=5) as resp:
        return resp.status


def test_nodes_register_and_stay_ready_with_renewed_leases(real_cluster, kubectl):
    def ready_nodes():
        nodes = kubectl.json("get", "nodes")["items"]
        ok = [n for n in nodes if condition(n, "Ready").get("status") == "True" and not n["spec"].get("taints")]
        return ok if len(ok) == len(NODES) else None

    nodes = wait_for(ready_nodes, timeout=30, interval=0.5, what="both nodes Ready without taints")
    assert sorted(n["metadata"]["name"] for n in nodes) == NODES
    for node in nodes:
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"].startswith("127.0.") and addresses["Hostname"] == node["metadata"]["name"]
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node["metadata"]["name"]
    leases = {n: kubectl.json("get", "lease", "-n", "kube-node-lease", n) for n in NODES}
    for name, lease in leases.items():
        assert lease["spec"]["holderIdentity"] == name
        assert lease["metadata"]["ownerReferences"][0]["uid"] == next(
            n["metadata"]["uid"] for n in nodes if n["metadata"]["name"] == name)
    classes = {sc["metadata"]["name"]: sc for sc in kubectl.json("get", "storageclasses")["items"]}
    assert classes["standard"]["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert classes["local-path"]["volumeBindingMode"] == "WaitForFirstConsumer"
    # renewed every heartbeat (2 s)
    for name, lease in leases.items():
        wait_for(lambda: kubectl.json("get", "lease", "-n", "kube-node-lease", name)["spec"]["renewTime"]
                 != lease["spec"]["renewTime"], timeout=10, interval=0.5, what=f"{name}'s Lease renewed")


def test_deployment_is_scheduled_by_the_real_scheduler_and_its_pods_serve_http(real_cluster, kubectl):
    kubectl("create", "secret", "generic", "web-secret", "--from-literal=greeting=hello")
    kubectl("apply", "-f", "-", input=DEPLOYMENT)
    kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    pods = wait_for(lambda: ready_web_pods(kubectl), timeout=30, interval=0.5, what="2 web pods Ready")
    scheduled = {e["involvedObject"]["name"]: e for e in kubectl.json(
        "get", "events", "-n", "default", "--field-selector", "reason=Scheduled")["items"]}
    for pod in pods:
        name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
        assert node in NODES and pod["status"]["phase"] == "Running"
        # bound by kube-scheduler (kubesim's own scheduler does not run in this mode)
        assert scheduled[name]["reportingComponent"] == "default-scheduler", scheduled[name]
        assert f"to {node}" in scheduled[name]["message"]
        assert condition(pod, "PodScheduled")["status"] == "True"
        assert pod["status"]["hostIP"] == real_cluster.nodes.nodes[node].kubelet.internal_ip
        container = pod["status"]["containerStatuses"][0]
        assert container["ready"] and "running" in container["state"]
        assert http_get(pod["status"]["podIP"], 8080) == 200   # the responder process itself, on the pod IP
        assert pod_processes(pod["metadata"]["uid"])
    deployment = kubectl.json("get", "deployment", "web")
    assert deployment["status"]["readyReplicas"] == 2 and deployment["status"]["updatedReplicas"] == 2


def test_rollout_completes_through_the_real_deployment_controller(real_cluster, kubectl):
    old = wait_for(lambda: ready_web_pods(kubectl), timeout=30, interval=0.5, what="2 web pods Ready")
    old_processes = {p["metadata"]["uid"]: pod_processes(p["metadata"]["uid"]) for p in old}
    assert all(old_processes.values())
    kubectl("set", "image", "deployment/web", "web=nginx:1.27")
    kubectl("rollout", "status", "deployment/web", "--timeout=90s")
    new = wait_for(lambda: ready_web_pods(kubectl), timeout=30, interval=0.5, what="2 new web pods Ready")
    assert {p["spec"]["containers"][0]["image"] for p in new} == {"nginx:1.27"}
    assert not {p["metadata"]["uid"] for p in new} & set(old_processes)
    for pod in new:
        assert http_get(pod["status"]["podIP"], 8080) == 200
    replicasets = kubectl.json("get", "replicasets", "-n", "default", "-l", "app=web")["items"]
    assert sorted((rs["spec"]["template"]["spec"]["containers"][0]["image"], rs["spec"]["replicas"])
                  for rs in replicasets) == [("nginx", 0), ("nginx:1.27", 2)]
    # the old pods were deleted by the controller and terminated by the kubelets: their processes are gone
    for uid, procs in old_processes.items():
        wait_for(lambda: not alive_in(procs), timeout=15, what=f"old pod {uid}'s processes gone")


def test_deleting_a_pod_stops_its_processes(real_cluster, kubectl):
    victim = wait_for(lambda: ready_web_pods(kubectl), timeout=30, interval=0.5, what="2 web pods Ready")[0]
    uid = victim["metadata"]["uid"]
    procs = pod_processes(uid)
    assert procs
    kubectl("delete", "pod", victim["metadata"]["name"], "--wait=true", "--timeout=30s")
    assert not alive_in(procs)  # the kubelet deletes the pod object only once its containers are stopped
    assert not pod_processes(uid)
    replacement = wait_for(lambda: ready_web_pods(kubectl), timeout=30, interval=0.5, what="a replacement Ready")
    assert uid not in {p["metadata"]["uid"] for p in replacement}


def test_a_node_identity_is_limited_to_its_own_objects(real_cluster, kubectl, tmp_path):
    kubectl("create", "secret", "generic", "unreferenced", "--from-literal=k=v")
    pod = wait_for(lambda: ready_web_pods(kubectl), timeout=30, interval=0.5, what="2 web pods Ready")[0]
    node = pod["spec"]["nodeName"]
    other = next(n for n in NODES if n != node)
    as_node = kubectl_runner(f"{real_cluster.control_plane.work_dir}/node-{node}.kubeconfig", str(tmp_path))
    assert as_node("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == f"system:node:{node}"
    # a Secret a pod on this node references: the Node authorizer's graph allows it
    assert as_node.json("get", "secret", "web-secret")["data"]["greeting"]
    # one no pod references: 403
    denied = as_node("get", "secret", "unreferenced", check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    assert "no relationship found between node" in denied.stderr
    # another node's object: NodeRestriction refuses
    relabel = as_node("label", "node", other, "kubesim.io/test=1", check=False)
    assert relabel.returncode != 0 and "Forbidden" in relabel.stderr
    # the kubelet's own RemoteStore gets the same answer (find() does not hide a 403 as "absent")
    with pytest.raises(errors.ApiError) as forbidden:
        real_cluster.nodes.nodes[node].store.find(SECRETS, "default", "unreferenced")
    assert forbidden.value.code == 403


def test_node_not_ready_fault_becomes_the_node_lifecycle_controllers_taint(real_cluster, kubectl):
    node = NODES[1]
    fault = real_cluster.faults.add("node-not-ready", node=node)
    try:
        def tainted():
            obj = kubectl.json("get", "node", node)
            taints = {(t["key"], t["effect"]) for t in obj["spec"].get("taints") or ()}
            return obj if ("node.kubernetes.io/unreachable", "NoExecute") in taints else None

        started = time.monotonic()
        obj = wait_for(tainted, timeout=45, interval=0.5, what=f"{node} tainted unreachable")
        # the grace is 8 s and the controller looks every 5 s: not before the grace, well within 45 s
        assert time.monotonic() - started >= 4
        assert condition(obj, "Ready")["status"] == "Unknown"
        assert condition(obj, "Ready")["reason"] == "NodeStatusUnknown"
        assert condition(kubectl.json("get", "node", NODES[0]), "Ready")["status"] == "True"
    finally:
        real_cluster.faults.clear(fault.id)

    def healthy():
        obj = kubectl.json("get", "node", node)
        return condition(obj, "Ready").get("status") == "True" and not obj["spec"].get("taints")

    wait_for(healthy, timeout=45, interval=0.5, what=f"{node} Ready and untainted again")


SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  externalIPs: [%s]
  ports: [{port: %d, targetPort: 8080}]
"""


def test_services_answer_through_the_proxy_on_the_real_endpointslices(real_cluster, kubectl):
    """The real EndpointSlice controller publishes the pods' addresses (out of the loopback range, which it
    would refuse), and kubesim's proxy, as kube-proxy with its own identity, follows them: the Service answers
    on its ClusterIP and its external address, and refuses connections while it has no Ready endpoint."""
    import ipaddress
    import socket

    from kubesim.addresses import POD_RANGE, SERVICE_RANGE, external_address

    external_ip, port = external_address(os.getpid() % 60000 + 1), 18080
    kubectl("apply", "-f", "-", input=SERVICE % (external_ip, port))
    pods = wait_for(lambda: ready_web_pods(kubectl), timeout=60, interval=0.5, what="two Ready web pods")
    nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
    for pod in pods:
        pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert pod_ip in ipaddress.ip_network(nodes[pod["spec"]["nodeName"]]["spec"]["podCIDR"])
        assert pod_ip in POD_RANGE
    cluster_ip = kubectl.json("get", "service", "web")["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in SERVICE_RANGE

    def published():
        slices = kubectl.json("get", "endpointslices", "-l", "kubernetes.io/service-name=web")["items"]
        addresses = {a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                     for a in e["addresses"]}
        return addresses if addresses == {p["status"]["podIP"] for p in pods} else None

    wait_for(published, timeout=30, interval=0.5, what="the EndpointSlice controller publishing both pods")
    for host, number in ((cluster_ip, port), (external_ip, port)):
        wait_for(lambda: _answers(host, number), timeout=30, interval=0.3, what=f"{host}:{number} answering")

    kubectl("scale", "deployment", "web", "--replicas=0")

    def refused():
        try:
            socket.create_connection((external_ip, port), timeout=2).close()
            return False
        except ConnectionRefusedError:
            return True
    wait_for(refused, timeout=30, interval=0.3, what="connections refused without a Ready endpoint")
    kubectl("scale", "deployment", "web", "--replicas=2")
    wait_for(lambda: _answers(external_ip, port), timeout=60, interval=0.3, what="the Service answering again")
    kubectl("delete", "service", "web")


def _answers(host: str, port: int) -> bool:
    try:
        return http_get(host, port) == 200
    except OSError:
        return False


CLAIMS = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data-network, namespace: default}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data-local, namespace: default}
spec: {storageClassName: local-path, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: uses-local, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: web, image: nginx, volumeMounts: [{name: data, mountPath: /data}]}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: data-local}}]
"""


def test_claims_are_provisioned_bound_and_reclaimed_through_the_real_volume_controller(real_cluster, kubectl):
    """The real persistentvolume-controller binds, kubesim's provisioner (its own identity) makes the volumes:
    the default class at once, local-path once kube-scheduler has picked the node, pinned to it; deleting a
    claim releases its volume, which the provisioner then deletes with its directory."""
    import os as _os

    kubectl("apply", "-f", "-", input=CLAIMS)

    def bound(name):
        pvc = kubectl.json("get", "pvc", name)
        return pvc if pvc.get("status", {}).get("phase") == "Bound" else None

    network = wait_for(lambda: bound("data-network"), timeout=30, interval=0.5, what="data-network Bound")
    local = wait_for(lambda: bound("data-local"), timeout=30, interval=0.5, what="data-local Bound")
    assert network["spec"]["storageClassName"] == "standard"      # the default class, set by admission
    pv_network = kubectl.json("get", "pv", network["spec"]["volumeName"])
    assert pv_network["spec"]["csi"]["driver"] == "network.kubesim.io"
    assert pv_network["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == "kubesim.io/network"
    pv_local = kubectl.json("get", "pv", local["spec"]["volumeName"])
    term = pv_local["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert (term["key"], term["values"]) == ("kubernetes.io/hostname", ["node2"])
    assert local["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node2"
    wait_for(lambda: kubectl.json("get", "pod", "uses-local")["status"].get("phase") == "Running", timeout=30,
             interval=0.5, what="the pod on the local volume Running")
    directory = pv_network["metadata"]["annotations"]["kubesim.io/host-path"]
    assert _os.path.isdir(directory)

    kubectl("delete", "pod", "uses-local", "--wait=true")
    kubectl("delete", "pvc", "data-network", "data-local", "--wait=true")

    def reclaimed():
        names = {pv["metadata"]["name"] for pv in kubectl.json("get", "pv")["items"]}
        return not names & {pv_network["metadata"]["name"], pv_local["metadata"]["name"]}
    wait_for(reclaimed, timeout=60, interval=0.5, what="both volumes deleted by the provisioner")
    assert not _os.path.exists(directory)


def test_jobs_run_their_command_to_completion_through_the_real_job_controller(real_cluster, kubectl):
    """`kubectl create job` on busybox: the real Job controller creates the pod, the kubelet runs the command in
    the sandbox, exit 0 completes the Job; exit 3 with backoffLimit 0 fails it with the real controller's
    reason."""
    kubectl("create", "job", "hello", "--image=busybox:1.36", "--", "sh", "-c", "echo hello from $(hostname)")
    kubectl("wait", "--for=condition=complete", "job/hello", "--timeout=60s")
    job = kubectl.json("get", "job", "hello")
    assert job["status"]["succeeded"] == 1
    pod = kubectl.json("get", "pods", "-l", "job-name=hello")["items"][0]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    failing = """
apiVersion: batch/v1
kind: Job
metadata: {name: fails, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox:1.36, command: [sh, -c, "exit 3"]}]
"""
    kubectl("apply", "-f", "-", input=failing)
    kubectl("wait", "--for=condition=failed", "job/fails", "--timeout=60s")
    failed = next(c for c in kubectl.json("get", "job", "fails")["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    pod = kubectl.json("get", "pods", "-l", "job-name=fails")["items"][0]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    kubectl("delete", "job", "hello", "fails")


def test_exec_and_logs_reach_kubesims_kubelet_api_through_the_real_api_server(real_cluster, kubectl):
    """The node declares ExtendWebSocketsToKubelet, so the API server proxies the WebSocket exec to the node's
    kubelet API (kubesim/kubeletapi.py, TLS, the API server's client certificate) and logs the same way."""
    from kubectl_support import check_exec_and_logs

    nodes = kubectl.json("get", "nodes")["items"]
    assert all(n["status"]["declaredFeatures"] == ["ExtendWebSocketsToKubelet"] for n in nodes)
    assert all(n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] != 10250 for n in nodes)
    check_exec_and_logs(kubectl, real_cluster.kubeconfig_path)


def test_log_options_through_the_real_api_server(kubectl):
    """The API server proxies pods/log with its options to the node's kubelet API, which picks the instance and
    reads its CRI log like the kubelet (kubesim/containerlogs.py)."""
    from kubectl_support import check_log_options

    check_log_options(kubectl)


def test_an_unrunnable_image_fails_its_pull_on_the_real_control_plane(kubectl):
    from kubectl_support import check_unrunnable_image

    check_unrunnable_image(kubectl)


def test_port_forward_through_the_real_api_server(kubectl):
    """The API server hands kubectl's tunnelled port-forward WebSocket to the node (ExtendWebSocketsToKubelet), whose
    kubelet API speaks SPDY/3.1 inside it (kubesim/portforward.py)."""
    from kubectl_support import check_port_forward

    check_port_forward(kubectl)


def test_run_interactive_through_the_real_api_server(kubectl):
    """kubectl's attach with stdin, through the API server to the node's kubelet API, into the container's stdin."""
    from kubectl_support import check_run_interactive

    check_run_interactive(kubectl)


def test_attach_through_the_real_api_server(kubectl):
    """The API server proxies kubectl's WebSocket attach to the node's kubelet API, which streams the container's
    output from its CRI log as it is written."""
    from kubectl_support import check_attach

    check_attach(kubectl)
