"""A real PostgreSQL behind a pod, its data on the pod's volume, and the attach rules of that volume."""
from __future__ import annotations

import time

import psycopg2
import pytest
from dataplane_support import (alive_in, container, create_pod, make_dataplane, pod_processes, wait_for,
                               wait_ready)

from kubesim import resources

PASSWORD = "k8smove-secret"


@pytest.fixture
def plane(tmp_path):
    store, dataplane, faults = make_dataplane(tmp_path)
    yield store, dataplane, faults
    dataplane.stop()


def bound_claim(store, name: str, storage_class: str, node_affinity: str | None = None) -> None:
    """A PVC bound to its PV, as the pv binder leaves them (node-local PVs carry a hostname affinity)."""
    pv_spec = {"storageClassName": storage_class, "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
               "claimRef": {"namespace": "default", "name": name}}
    if node_affinity:
        pv_spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_affinity]}]}]}}
    store.create(resources.PVS, {"metadata": {"name": f"pv-{name}"}, "spec": pv_spec})
    store.create(resources.PVCS, {"metadata": {"name": name}, "spec": {
        "storageClassName": storage_class, "accessModes": ["ReadWriteOnce"], "volumeName": f"pv-{name}",
        "resources": {"requests": {"storage": "1Gi"}}}})


PG_ISREADY = ["pg_isready", "-U", "app", "-d", "appdb"]
PG_ISREADY_SHELL = ["sh", "-c", "pg_isready -U $POSTGRES_USER -d $POSTGRES_DB"]


def db_pod(store, name: str, claim: str, probe_command: list[str] = PG_ISREADY) -> dict:
    return create_pod(store, name, [{
        "name": "postgres", "image": "docker.io/library/postgres:16",
        "ports": [{"containerPort": 5432}],
        "env": [{"name": "POSTGRES_USER", "value": "app"}, {"name": "POSTGRES_PASSWORD", "value": PASSWORD},
                {"name": "POSTGRES_DB", "value": "appdb"},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
        "readinessProbe": {"exec": {"command": probe_command}, "periodSeconds": 0.2},
    }], volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": claim}}], terminationGracePeriodSeconds=5)


def connect(ip: str):
    return psycopg2.connect(host=ip, port=5432, user="app", password=PASSWORD, dbname="appdb", connect_timeout=5)


def test_postgres_data_survives_a_move_to_another_node(plane, tmp_path):
    store, dataplane, _ = plane
    bound_claim(store, "db-data", "standard")
    first = db_pod(store, "db-0", "db-data")
    started = time.monotonic()
    dataplane.runtime.start_pod(first, "node1", "127.0.60.1")
    wait_ready(dataplane, first, "postgres")
    print(f"PostgreSQL (initdb + start) ready after {time.monotonic() - started:.2f}s")
    with connect("127.0.60.1") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE rows (id int PRIMARY KEY, note text)")
        cur.executemany("INSERT INTO rows VALUES (%s, %s)", [(i, f"row {i}") for i in range(100)])
    conn.close()
    assert (tmp_path / "work" / "volumes" / "pv-db-data" / "pgdata" / "PG_VERSION").exists()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.60.1", port=5432, user="app", password="wrong", dbname="appdb")

    second = db_pod(store, "db-1", "db-data", PG_ISREADY_SHELL)
    dataplane.runtime.start_pod(second, "node2", "127.0.60.2")
    waiting = wait_for(lambda: (c := container(dataplane, second, "postgres")) and c.message and c,
                       what="the Multi-Attach wait")
    assert not waiting.running and waiting.reason == "ContainerCreating"
    assert waiting.message == 'Multi-Attach error for volume "pv-db-data" Volume is already used by pod(s) default/db-0'
    problem = dataplane.runtime.attach_problem(second, "node2")
    assert (problem.reason, problem.message) == ("FailedAttachVolume", waiting.message)
    assert dataplane.runtime.attach_problem(second, "node1") is None   # same node: ReadWriteOnce allows it

    first_processes = pod_processes(first["metadata"]["uid"])
    assert len(alive_in(first_processes)) > 3   # postmaster, checkpointer, walwriter, …
    dataplane.runtime.stop_pod(first["metadata"]["uid"], grace_seconds=5)
    assert alive_in(first_processes) == []
    started = time.monotonic()
    wait_ready(dataplane, second, "postgres")
    print(f"PostgreSQL restart on existing data ready after {time.monotonic() - started:.2f}s")
    with connect("127.0.60.2") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), max(note) FROM rows")
        assert cur.fetchone() == (100, "row 99")
    conn.close()
    log = dataplane.runtime.logs(second["metadata"]["uid"], "postgres")
    assert "Skipping initialization" in log and 'listening on IPv4 address "127.0.60.2", port 5432' in log

    second_processes = pod_processes(second["metadata"]["uid"])
    dataplane.stop()
    assert second_processes and alive_in(second_processes) == []


def test_an_interrupted_initialisation_starts_over(plane, tmp_path):
    """A container killed mid-init leaves the staging directory (and perhaps entries already moved out of it);
    the next start must not take that for a cluster, or the database would be missing for good."""
    store, dataplane, _ = plane
    bound_claim(store, "half-done", "standard")
    pgdata = tmp_path / "work" / "volumes" / "pv-half-done" / "pgdata"
    (pgdata / ".kubesim-initdb" / "global").mkdir(parents=True)
    (pgdata / "base").mkdir()   # moved out before the kill
    (pgdata / "postgresql.conf").write_text("# from the interrupted init\n")
    pod = db_pod(store, "db-0", "half-done")
    dataplane.runtime.start_pod(pod, "node1", "127.0.60.3")
    wait_ready(dataplane, pod, "postgres")
    with connect("127.0.60.3") as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        assert cur.fetchone() == ("appdb",)
    conn.close()
    log = dataplane.runtime.logs(pod["metadata"]["uid"], "postgres")
    assert "init process was interrupted before it completed; initialising again" in log, log
    assert (pgdata / "PG_VERSION").exists() and not (pgdata / ".kubesim-initdb").exists()


def test_node_local_volume_is_refused_on_another_node(plane):
    store, dataplane, _ = plane
    bound_claim(store, "local-data", "local-path", node_affinity="node1")
    pod = create_pod(store, "stuck", [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}],
                                       "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "local-data"}}])
    expected = 'MountVolume.NodeAffinity check failed for volume "pv-local-data" : no matching NodeSelectorTerms'
    problem = dataplane.runtime.attach_problem(pod, "node2")
    assert (problem.reason, problem.message) == ("FailedMount", expected)
    assert dataplane.runtime.attach_problem(pod, "node1") is None

    dataplane.runtime.start_pod(pod, "node2", "127.0.60.3")
    time.sleep(1.0)
    status = container(dataplane, pod, "web")
    assert (status.running, status.reason, status.message) == (False, "ContainerCreating", expected)
    assert pod_processes(pod["metadata"]["uid"]) == set()


def test_empty_dir_is_deleted_with_its_pod(plane, tmp_path):
    store, dataplane, _ = plane
    pod = create_pod(store, "scratch", [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}],
                                         "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                     volumes=[{"name": "tmp", "emptyDir": {}}])
    uid = pod["metadata"]["uid"]
    dataplane.runtime.start_pod(pod, "node1", "127.0.60.4")
    wait_ready(dataplane, pod, "web")
    scratch = tmp_path / "work" / "pods" / uid / "volumes" / "empty-dir" / "tmp"
    assert scratch.is_dir()
    dataplane.runtime.stop_pod(uid, 1)
    assert not scratch.exists()


def test_pg_isready_probe_runs_for_real():
    from kubesim.dataplane.network import LoopbackNetwork
    from kubesim.dataplane.probes import Prober, ProbeTarget
    from kubesim.dataplane.runtime import PG_BIN

    target = ProbeTarget("127.0.60.9", {}, LoopbackNetwork(), {"pg_isready": f"{PG_BIN}/pg_isready"},
                         {"PGHOST": "127.0.60.9", "PGPORT": "5432"})
    for command in (["pg_isready"], ["sh", "-c", "pg_isready -t 1"]):
        prober = Prober({"exec": {"command": command}, "failureThreshold": 1}, time.monotonic())
        prober.run(target, time.monotonic())
        assert not prober.passing and prober.message == f"command {command} exited with 2"


def test_uninitialized_postgres_without_password_fails_like_the_official_image(plane):
    store, dataplane, _ = plane
    pod = create_pod(store, "no-password", [{"name": "postgres", "image": "postgres:17"}], restartPolicy="Never")
    dataplane.runtime.start_pod(pod, "node1", "127.0.60.5")
    status = wait_for(lambda: (c := container(dataplane, pod, "postgres")) and c.exit_code is not None and c)
    assert (status.reason, status.exit_code) == ("Error", 1)
    assert "superuser password is not specified" in dataplane.runtime.logs(pod["metadata"]["uid"], "postgres")
