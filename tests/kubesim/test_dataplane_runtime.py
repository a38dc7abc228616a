"""ProcessRuntime: real processes behind pods, probes, restarts, env, logs, and nothing left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest
from dataplane_support import (alive_in, container, create_pod, make_dataplane, pod_processes, wait_for,
                               wait_ready)

from kubesim import resources

# Test images: a program printing its environment, and one that exits at once.
TEST_IMAGES = """
images:
  - patterns: ["envdump*"]
    run: command
    command: ["{python}", "-c", "import json, os, time; print(json.dumps(dict(os.environ)), flush=True); time.sleep(9)"]
  - patterns: ["crasher*"]
    run: command
    command: ["/bin/sh", "-c", "echo crashing; exit 3"]
"""


@pytest.fixture
def plane(tmp_path):
    images = tmp_path / "images.yaml"
    images.write_text(TEST_IMAGES)
    store, dataplane, faults = make_dataplane(tmp_path, str(images))
    yield store, dataplane, faults
    dataplane.stop()


def web(port: int = 8080, **probes) -> dict:
    return {"name": "web", "image": "registry.example/shop/web:1.2", "ports": [{"name": "http", "containerPort": port}],
            **probes}


def test_responder_pod_starts_probes_and_stops(plane):
    store, dataplane, _ = plane
    pod = create_pod(store, "web-a", [web(readinessProbe={"httpGet": {"path": "/healthz", "port": "http"},
                                                          "periodSeconds": 0.1},
                                          livenessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 0.1})])
    uid = pod["metadata"]["uid"]
    sandbox = dataplane.runtime.start_pod(pod, "node1", "127.0.50.1")
    assert sandbox.ip == "127.0.50.1" and not sandbox.containers["web"].ready
    status = wait_ready(dataplane, pod, "web")
    assert status.running and status.restart_count == 0
    assert status.image_id.startswith("registry.example/shop/web@sha256:")

    answer = json.load(urllib.request.urlopen("http://127.0.50.1:8080/hello", timeout=5))
    assert answer == {"pod": "web-a", "node": "node1", "image": "registry.example/shop/web:1.2", "path": "/hello",
                      "simulated": True}
    # the runtime copies a container's output into its log on a thread of its own, as containerd does
    wait_for(lambda: "GET /hello" in dataplane.runtime.logs(uid, "web"), what="the request in the log")
    processes = pod_processes(uid)
    assert alive_in(processes)

    dataplane.runtime.stop_pod(uid, grace_seconds=1)
    assert dataplane.runtime.status(uid) is None
    assert alive_in(processes) == []
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.50.1:8080/", timeout=2)


def test_an_image_no_entry_matches_fails_its_pull(plane):
    """No silent stand-in: an image the table cannot run (here an init container's) is a pull failure that says
    so and names what runs; the table's own images pull."""
    store, dataplane, _ = plane
    runnable = create_pod(store, "runnable", [web()], initContainers=[{"name": "setup", "image": "busybox:1.36"}])
    assert dataplane.runtime.pull(runnable, "node1") is None
    odd = create_pod(store, "odd", [web()], initContainers=[{"name": "setup", "image": "example.com/tools:1"}])
    message = dataplane.runtime.pull(odd, "node1")
    assert message.startswith('image "example.com/tools:1" is not runnable on kubesim: no entry of its image table '
                              'matches it (runnable here: envdump, crasher, kubesim-demo-app, k8smove-demo-app, '
                              'postgres, '), message
    assert message.endswith(", nginx, httpd, demo/app, shop/web, k8smove/web, agent; add an entry with "
                            "`python -m kubesim up --images FILE`)"), message


def test_pre_stop_sleep_keeps_serving_until_the_stop_signal(plane):
    store, dataplane, _ = plane
    pod = create_pod(store, "web-d", [web(lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "sleep 0.6"]}}})])
    uid = pod["metadata"]["uid"]
    dataplane.runtime.start_pod(pod, "node1", "127.0.50.7")
    wait_for(lambda: _answers("http://127.0.50.7:8080/"), what="the pod to answer")
    stopper = threading.Thread(target=dataplane.runtime.stop_pod, args=(uid, 2))
    started = time.monotonic()
    stopper.start()
    time.sleep(0.3)
    assert _answers("http://127.0.50.7:8080/")
    stopper.join()
    assert 0.6 <= time.monotonic() - started < 2
    assert not _answers("http://127.0.50.7:8080/")


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False


def test_readiness_failure_keeps_container_unready_with_the_reason(plane):
    store, dataplane, _ = plane
    pod = create_pod(store, "web-b", [web(readinessProbe={"httpGet": {"path": "/", "port": 9999},
                                                          "periodSeconds": 0.1, "failureThreshold": 1})])
    dataplane.runtime.start_pod(pod, "node1", "127.0.50.2")
    status = wait_for(lambda: (c := container(dataplane, pod, "web")) and c.running and c.message and c,
                      what="a failed readiness probe")
    # the kubelet's wording (Go's net/http error), as `kubectl describe` shows it
    assert not status.ready
    assert status.message == 'Get "http://127.0.50.2:9999/": dial tcp 127.0.50.2:9999: connect: connection refused'


def test_liveness_failure_restarts_the_container(plane):
    store, dataplane, _ = plane
    pod = create_pod(store, "web-c", [web(livenessProbe={"tcpSocket": {"port": 9999}, "periodSeconds": 0.1,
                                                         "failureThreshold": 2})])
    dataplane.runtime.start_pod(pod, "node1", "127.0.50.3")
    status = wait_for(lambda: (c := container(dataplane, pod, "web")) and c.restart_count >= 2 and c,
                      what="two liveness restarts")
    assert status.exit_code is not None
    assert "failed liveness probe" in (status.message or "") or status.running


def test_crashing_container_backs_off_or_stays_down_per_restart_policy(plane):
    store, dataplane, _ = plane
    always = create_pod(store, "crash-always", [{"name": "c", "image": "crasher:1"}])
    never = create_pod(store, "crash-never", [{"name": "c", "image": "crasher:1"}], restartPolicy="Never")
    dataplane.runtime.start_pod(always, "node1", "127.0.50.4")
    dataplane.runtime.start_pod(never, "node1", "127.0.50.5")
    looping = wait_for(lambda: (c := container(dataplane, always, "c")) and c.reason == "CrashLoopBackOff" and c,
                       what="CrashLoopBackOff")
    assert looping.exit_code == 3 and looping.restart_count >= 2 and not looping.running
    assert "back-off" in looping.message
    done = wait_for(lambda: (c := container(dataplane, never, "c")) and c.exit_code is not None and c)
    assert (done.reason, done.exit_code, done.restart_count) == ("Error", 3, 0)
    assert "crashing" in dataplane.runtime.logs(never["metadata"]["uid"], "c")


def test_env_from_values_configmaps_secrets_and_fields(plane):
    store, dataplane, _ = plane
    store.create(resources.CONFIGMAPS, {"metadata": {"name": "app-config"}, "data": {"MODE": "blue", "LEVEL": "3"}})
    store.create(resources.SERVICES, {"metadata": {"name": "db-primary"}, "spec": {
        "clusterIP": "127.96.3.4", "ports": [{"name": "pg", "port": 5432, "targetPort": 5432}]}})
    pod = create_pod(store, "env-a", [{
        "name": "app", "image": "envdump:latest", "ports": [{"containerPort": 7000}],
        "envFrom": [{"configMapRef": {"name": "app-config"}, "prefix": "CFG_"}],
        "env": [{"name": "GREETING", "value": "hello"},
                {"name": "MESSAGE", "value": "$(GREETING) from $(POD_NAME), $$(kept)"},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db-secret", "key": "password"}}},
                {"name": "THE_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
                {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}}}],
    }])
    uid = pod["metadata"]["uid"]
    dataplane.runtime.start_pod(pod, "node2", "127.0.50.6")
    waiting = wait_for(lambda: (c := container(dataplane, pod, "app")) and c.reason == "CreateContainerConfigError"
                       and c, what="CreateContainerConfigError")
    assert waiting.message == 'secret "db-secret" not found' and not waiting.running

    store.create(resources.SECRETS, {"metadata": {"name": "db-secret"}, "data": {"password": "czNjcjN0"}})
    wait_for(lambda: dataplane.runtime.logs(uid, "app").strip(), what="the env dump")
    env = json.loads(dataplane.runtime.logs(uid, "app").strip().splitlines()[-1])
    assert {k: env.get(k) for k in ("CFG_MODE", "CFG_LEVEL", "GREETING", "MESSAGE", "DB_PASSWORD", "THE_NODE",
                                    "POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE_NAME", "PORT")} == {
        "CFG_MODE": "blue", "CFG_LEVEL": "3", "GREETING": "hello", "MESSAGE": "hello from env-a, $(kept)",
        "DB_PASSWORD": "s3cr3t", "THE_NODE": "node2", "POD_NAME": "env-a", "POD_NAMESPACE": "default",
        "POD_IP": "127.0.50.6", "NODE_NAME": "node2", "PORT": "7000"}
    assert env["TEAM"] == "" and "OPTIONAL" not in env
    assert {k: v for k, v in env.items() if k.startswith("DB_PRIMARY_")} == {  # kubelet's service links
        "DB_PRIMARY_SERVICE_HOST": "127.96.3.4", "DB_PRIMARY_SERVICE_PORT": "5432",
        "DB_PRIMARY_SERVICE_PORT_PG": "5432", "DB_PRIMARY_PORT": "tcp://127.96.3.4:5432",
        "DB_PRIMARY_PORT_5432_TCP": "tcp://127.96.3.4:5432", "DB_PRIMARY_PORT_5432_TCP_PROTO": "tcp",
        "DB_PRIMARY_PORT_5432_TCP_PORT": "5432", "DB_PRIMARY_PORT_5432_TCP_ADDR": "127.96.3.4"}


def test_close_stops_every_process(plane):
    store, dataplane, _ = plane
    pods = [create_pod(store, f"web-{i}", [web()]) for i in range(3)]
    for i, pod in enumerate(pods):
        dataplane.runtime.start_pod(pod, "node1", f"127.0.51.{i + 1}")
    processes = set()
    for pod in pods:
        processes |= wait_for(lambda: pod_processes(pod["metadata"]["uid"]), what="the pod's process")
    dataplane.stop()
    assert len(processes) == 3 and alive_in(processes) == []


CRASHING_PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[1] + "/tests")
    sys.path.insert(0, sys.argv[1] + "/tests/kubesim")
    from pathlib import Path
    from dataplane_support import create_pod, make_dataplane
    store, dataplane, _ = make_dataplane(Path(sys.argv[2]))
    web = create_pod(store, "orphan-web", [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}])
    db = create_pod(store, "orphan-db", [{"name": "db", "image": "postgres:16", "env": [
        {"name": "POSTGRES_PASSWORD", "value": "pw"}], "readinessProbe": {"exec": {"command": ["pg_isready"]},
                                                                          "periodSeconds": 0.1}}])
    dataplane.runtime.start_pod(web, "node1", "127.0.52.1")
    dataplane.runtime.start_pod(db, "node1", "127.0.52.2")
    while not dataplane.runtime.status(db["metadata"]["uid"]).containers["db"].ready:
        time.sleep(0.05)
    print(web["metadata"]["uid"], db["metadata"]["uid"], flush=True)
    time.sleep(120)
""")


def test_processes_die_with_a_killed_kubesim(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, "-c", CRASHING_PARENT, root, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        uids = parent.stdout.readline().split()
        assert len(uids) == 2, "the parent did not start its pods"
        processes = wait_for(lambda: pod_processes(uids[0]) | pod_processes(uids[1]), what="the pods' processes")
        assert len(alive_in(processes)) > 3   # the responder, the postmaster and its children
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: alive_in(processes) == [], timeout=5, what="the orphaned pod processes to die")
    finally:
        parent.kill()
        parent.wait()
