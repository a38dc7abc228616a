"""The real control plane built from source: reachable by kubectl and the Python client, controllers and
scheduler at work, loopback only, nothing left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_server_is_kubernetes_1_36_3_built_here(kubectl):
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"
    assert (version["serverVersion"]["major"], version["serverVersion"]["minor"]) == ("1", "36")


def test_kubectl_lists_the_system_namespaces(kubectl):
    names = {ns["metadata"]["name"] for ns in kubectl.json("get", "namespaces")["items"]}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names


def test_kubectl_creates_a_namespace_and_auth_can_i_answers(kubectl):
    assert "namespace/basics created" in kubectl("create", "namespace", "basics").stdout
    assert kubectl("get", "namespace", "basics", "-o", "jsonpath={.status.phase}").stdout == "Active"
    assert kubectl("auth", "can-i", "create", "deployments", "-n", "basics").stdout.strip() == "yes"
    # The namespace's default ServiceAccount (made by the controller-manager) has no rights of its own.
    denied = kubectl("auth", "can-i", "create", "deployments", "-n", "basics",
                     "--as=system:serviceaccount:basics:default", check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")


def test_python_client_over_https(control_plane, api_client):
    from kubernetes.client import CoreV1Api, VersionApi

    assert api_client.configuration.host == control_plane.url and control_plane.url.startswith("https://127.0.0.1:")
    assert VersionApi(api_client).get_code().git_version == "v1.36.3"
    assert "kube-system" in {ns.metadata.name for ns in CoreV1Api(api_client).list_namespace().items}


def test_unauthenticated_requests_get_no_resources(control_plane):
    """Anonymous users reach only the public health/version paths; resources need a client certificate."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=control_plane.ca_file)
    with urllib.request.urlopen(f"{control_plane.url}/readyz", context=context, timeout=10) as resp:
        assert resp.read() == b"ok"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{control_plane.url}/api/v1/namespaces", context=context, timeout=10)
    assert refused.value.code == 403


def test_create_job_makes_a_pod_that_waits_for_a_node(kubectl):
    """The Job controller (kube-controller-manager) creates the pod; the scheduler finds no node for it —
    phase 1 has no nodes, so Pending/Unschedulable is the expected outcome."""
    kubectl("create", "namespace", "jobs")
    assert "job.batch/hello created" in kubectl("-n", "jobs", "create", "job", "hello", "--image=busybox:1.36",
                                                "--", "echo", "hello").stdout
    pods = _wait_for(lambda: kubectl.json("-n", "jobs", "get", "pods", "-l", "job-name=hello")["items"], 60,
                     "the Job controller's pod")
    [pod] = pods
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod["status"]["phase"] == "Pending" and "nodeName" not in pod["spec"]

    def unschedulable():
        status = kubectl.json("-n", "jobs", "get", "pod", pod["metadata"]["name"])["status"]
        return [c for c in status.get("conditions", []) if c["type"] == "PodScheduled"
                and c["status"] == "False" and c["reason"] == "Unschedulable"]
    [condition] = _wait_for(unschedulable, 60, "the scheduler's verdict")
    assert "no nodes available" in condition["message"]
    job = kubectl.json("-n", "jobs", "get", "job", "hello")
    assert job["status"].get("active") == 1


def test_every_listener_is_on_loopback(control_plane):
    sockets = control_plane.listening_sockets()
    assert set(sockets) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    for component, addresses in sockets.items():
        assert addresses, f"{component} listens nowhere"
        assert {address for address, _ in addresses} == {"127.0.0.1"}, (component, addresses)
    api_port = int(control_plane.url.rsplit(":", 1)[1])
    assert ("127.0.0.1", api_port) in sockets["kube-apiserver"]


def test_a_killed_python_leaves_no_component_running(tmp_path):
    """SIGKILL the Python that started a control plane: PR_SET_PDEATHSIG takes every component down with it."""
    script = ("import json, sys, time\n"
              "from kubesim.controlplane import ControlPlane\n"
              f"cp = ControlPlane(work_dir={str(tmp_path / 'work')!r}).start()\n"
              "print(json.dumps(cp.pids()), flush=True)\n"
              "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        pids = json.loads(child.stdout.readline())
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
        assert all(_alive(pid) for pid in pids.values())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    _wait_for(lambda: not any(_alive(pid) for pid in pids.values()), 10, f"components {pids} to die")


def test_stop_ends_every_component_and_removes_its_files():
    from kubesim.controlplane import ControlPlane

    cp = ControlPlane().start()
    pids, work_dir = cp.pids(), cp.work_dir
    assert len(pids) == 4 and all(_alive(pid) for pid in pids.values()) and os.path.isdir(work_dir)
    cp.stop()
    assert not any(_alive(pid) for pid in pids.values()) and not os.path.exists(work_dir)
