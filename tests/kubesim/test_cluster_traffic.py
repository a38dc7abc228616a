"""Whole-cluster traffic: real requests through a Service's proxy while pods move between nodes, a real
PostgreSQL moved with its volume, and no process left behind after the cluster stops."""
from __future__ import annotations

import os
import socket
import threading
import time

import psutil
import psycopg2
import pytest
from cluster_support import (RECREATE, SURGE, deployment, dump, kubectl, pods_of, ready_pods, service, wait_for,
                             wait_rolled_out)
from k8smove.availability import ProbeRecord, run

from kubesim.resources import SERVICES
from tests.operators.kubesim_release import unique_external_ip

RATE = 25.0   # requests per second, fired at a fixed rate whatever the latency


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expose(cluster, name: str) -> str:
    """A Service with an external address on a free port; the URL its proxy really answers on."""
    port, address_ = free_port(), unique_external_ip()
    kubectl(cluster, "apply", "-f", "-", input=dump(service(name, port=port, target=80, externalIPs=[address_])))

    def address():
        svc = cluster.store.get(SERVICES, "default", name)
        fallback = (svc["metadata"].get("annotations") or {}).get("kubesim.io/proxy-address")
        return fallback.split(",")[0] if fallback else f"{address_}:{port}"
    url = f"http://{address()}/"
    wait_for(lambda: _answers(url), what=f"{url} answering")
    return url


def _answers(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


class Probe:
    """availability.run in a thread: steady GETs at RATE/s until stopped."""

    def __init__(self, url: str):
        self.url, self.stop, self.record = url, threading.Event(), ProbeRecord()
        self.thread = threading.Thread(target=run, args=(url, RATE, 0, self.stop, self.record), daemon=True)

    def __enter__(self) -> "Probe":
        self.thread.start()
        time.sleep(0.5)   # some answers before the move
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)   # and some after it
        self.stop.set()
        self.thread.join(10)
        self.summary = self.record.summary(time.monotonic())


@pytest.fixture
def proxy_process_cluster(tmp_path):
    """The cluster fixture's, with the Service proxy as a process of its own (ClusterConfig.proxy_process)."""
    from kubesim.cluster import Cluster

    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0, proxy_process=True,
                 work_dir=str(tmp_path / "kubesim"), kubeconfig_path=str(tmp_path / "kubeconfig")) as c:
        yield c


@pytest.mark.parametrize("proxy", ["thread", "process"])
def test_surge_first_move_loses_no_request(proxy, request):
    cluster = request.getfixturevalue("cluster" if proxy == "thread" else "proxy_process_cluster")
    if proxy == "process":
        assert cluster.proxy_process.poll() is None       # the requests below go through that process
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("web", replicas=1, node="node1", strategy=SURGE)))
    wait_rolled_out(cluster, "web")
    url = expose(cluster, "web")
    before = ready_pods(cluster, "web")[0]["metadata"]["name"]
    with Probe(url) as probe:
        kubectl(cluster, "patch", "deployment", "web", "-p",
                '{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node2"}}}}}')
        wait_rolled_out(cluster, "web")
        wait_for(lambda: len(pods_of(cluster, "web")) == 1, what="old pod gone")
    s = probe.summary
    print(f"\nsurge-first move: sent={s['sent']} failed={s['failed']} max_gap_ms={s['max_gap_ms']} "
          f"errors={s['errors']} placements={s['placements']}")
    assert s["sent"] >= RATE * 1.5
    assert s["sent"] / s["duration_s"] >= 20
    assert s["failed"] == 0, s["errors"]
    places = s["placements"]
    assert places[0]["pod"] == before and places[0]["node"] == "node1"
    assert places[-1]["node"] == "node2" and places[-1]["pod"] != before
    assert places[-1]["pod"] == ready_pods(cluster, "web", node="node2")[0]["metadata"]["name"]


def test_drain_evict_first_drops_requests(cluster):
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("web", replicas=1, node=None)))
    kubectl(cluster, "cordon", "node2")   # start on node1
    wait_rolled_out(cluster, "web")
    kubectl(cluster, "uncordon", "node2")
    before = ready_pods(cluster, "web")[0]
    assert before["spec"]["nodeName"] == "node1"
    url = expose(cluster, "web")
    with Probe(url) as probe:
        out = kubectl(cluster, "drain", "node1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
                      timeout=90).stdout
        assert "node/node1 drained" in out
        wait_for(lambda: ready_pods(cluster, "web", node="node2"), what="replacement ready on node2")
        wait_for(lambda: len(pods_of(cluster, "web")) == 1, what="old pod gone")
    s = probe.summary
    print(f"\ndrain (evict-first): sent={s['sent']} failed={s['failed']} max_gap_ms={s['max_gap_ms']} "
          f"errors={s['errors']} placements={s['placements']}")
    assert s["sent"] / s["duration_s"] >= 20
    assert s["failed"] > 0, "evicting the only replica leaves no Ready endpoint for a while"
    assert s["max_gap_ms"] > 200
    # no Ready endpoint: connecting is refused (kube-proxy's REJECT); one in flight may be cut
    assert s["errors"].get("ConnectionRefusedError", 0) > 0, s["errors"]
    assert set(s["errors"]) <= {"ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected"}, s["errors"]
    assert s["placements"][0] == {**s["placements"][0], "pod": before["metadata"]["name"], "node": "node1"}
    assert s["placements"][-1]["node"] == "node2"
    kubectl(cluster, "uncordon", "node1")


# ---- PostgreSQL with its volume ----------------------------------------------------------------------------
PASSWORD = "k8smove-secret"


def postgres(storage_class: str) -> str:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "db-data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                      "resources": {"requests": {"storage": "1Gi"}}}}
    dep = deployment("db", replicas=1, image="postgres:16", node="node1", strategy=RECREATE, port=5432,
                     probe=False)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "POSTGRES_USER", "value": "app"}, {"name": "POSTGRES_PASSWORD", "value": PASSWORD},
                        {"name": "POSTGRES_DB", "value": "appdb"},
                        {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}]
    container["volumeMounts"] = [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]
    container["readinessProbe"] = {"exec": {"command": ["pg_isready", "-U", "app", "-d", "appdb"]},
                                   "periodSeconds": 1}
    dep["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "db-data"}}]
    dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    svc = service("db", port=5432, target=5432)
    return dump(claim, dep, svc)


def connect(cluster):
    ip = cluster.store.get(SERVICES, "default", "db")["spec"]["clusterIP"]
    return psycopg2.connect(host=ip, port=5432, user="app", password=PASSWORD, dbname="appdb", connect_timeout=5)


def move_db_to_node2(cluster) -> None:
    kubectl(cluster, "patch", "deployment", "db", "-p",
            '{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node2"}}}}}')


def test_postgres_on_network_storage_moves_with_its_rows(cluster):
    kubectl(cluster, "apply", "-f", "-", input=postgres("standard"))
    wait_rolled_out(cluster, "db", timeout=45)
    first = ready_pods(cluster, "db")[0]
    assert first["spec"]["nodeName"] == "node1"
    with connect(cluster) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE rows (id serial PRIMARY KEY, value text)")
        cur.executemany("INSERT INTO rows (value) VALUES (%s)", [(f"row-{i}",) for i in range(100)])
    conn.close()

    move_db_to_node2(cluster)
    wait_rolled_out(cluster, "db", timeout=45)
    wait_for(lambda: [p["metadata"]["name"] for p in pods_of(cluster, "db")] != [first["metadata"]["name"]]
             and len(pods_of(cluster, "db")) == 1, what="only the new pod")
    moved = ready_pods(cluster, "db")[0]
    assert moved["spec"]["nodeName"] == "node2" and moved["status"]["podIP"] != first["status"]["podIP"]
    conn = wait_for(lambda: _try_connect(cluster), timeout=20, what="PostgreSQL through the Service")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT value FROM rows ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [f"row-{i}" for i in range(100)]
        cur.execute("SELECT inet_server_addr()")
        assert cur.fetchone()[0] == moved["status"]["podIP"]
    conn.close()


def _try_connect(cluster):
    try:
        return connect(cluster)
    except psycopg2.OperationalError:
        return None


def test_postgres_on_local_path_cannot_follow_to_another_node(cluster):
    kubectl(cluster, "apply", "-f", "-", input=postgres("local-path"))
    wait_rolled_out(cluster, "db", timeout=45)
    assert ready_pods(cluster, "db")[0]["spec"]["nodeName"] == "node1"
    move_db_to_node2(cluster)

    def stuck_pod():
        pods = [p for p in pods_of(cluster, "db") if p["spec"].get("nodeSelector", {}).get(
            "kubernetes.io/hostname") == "node2"]
        conds = [c for p in pods for c in p["status"].get("conditions") or [] if c["type"] == "PodScheduled"
                 and c["status"] == "False"]
        return (pods[0], conds[0]) if conds else None
    pod, cond = wait_for(stuck_pod, timeout=30, what="the moved pod unschedulable")
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == ("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                               "1 node(s) had volume node affinity conflict. preemption: 0/2 nodes are available: "
                               "2 Preemption is not helpful for scheduling.")
    time.sleep(1)
    pods = pods_of(cluster, "db")
    assert len(pods) == 1   # Recreate: the old one is gone, the new one cannot start anywhere
    assert pods[0]["status"]["phase"] == "Pending" and not pods[0]["spec"].get("nodeName")
    described = " ".join(kubectl(cluster, "describe", "pod", pods[0]["metadata"]["name"]).stdout.split())
    assert "FailedScheduling" in described and "1 node(s) had volume node affinity conflict" in described


# ---- nothing left behind -----------------------------------------------------------------------------------
@pytest.fixture
def leftovers():
    """Checked after the cluster fixture's teardown (this fixture is set up first, so torn down last)."""
    seen: dict = {}
    yield seen
    assert seen, "the test did not record its processes"
    remaining = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "create_time", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info["cmdline"] or [])
        env = info["environ"] or {}
        if ((proc.pid, info["create_time"]) in seen["processes"] or seen["work_dir"] in cmdline
                or env.get("KUBESIM_POD_UID") in seen["uids"]):
            remaining.append((proc.pid, cmdline))
    assert not remaining, f"left behind by the cluster: {remaining}"


def test_no_process_survives_the_cluster(leftovers, cluster):
    kubectl(cluster, "apply", "-f", "-", input=postgres("standard"))
    kubectl(cluster, "apply", "-f", "-", input=dump(deployment("web", replicas=2)))
    wait_rolled_out(cluster, "web")
    wait_rolled_out(cluster, "db", timeout=45)
    uids = {p["metadata"]["uid"] for p in pods_of(cluster, "web") + pods_of(cluster, "db")}
    processes = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            uid = proc.environ().get("KUBESIM_POD_UID")
            if uid in uids:
                processes[(proc.pid, proc.create_time())] = (uid, " ".join(proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    assert {uid for uid, _ in processes.values()} == uids, "every pod runs real processes"
    assert any("postgres" in cmdline for _, cmdline in processes.values())
    leftovers.update(processes=set(processes), uids=uids, work_dir=os.path.realpath(cluster.config.work_dir))
