"""The real scheduler path: Airflow's api-server, scheduler, dag-processor and triggerer as separate processes
(LocalExecutor, SQLite metadata DB in a throw-away AIRFLOW_HOME) against one kubesim cluster per module.

The components need ``kubernetes_default`` (the cluster's kubeconfig) in their environment when they start,
so the cluster is module-scoped here too (``cluster`` and ``kube_client`` override the function-scoped ones of
tests/conftest.py for this directory only).

Auth: the simple auth manager with ``[core] simple_auth_manager_all_admins`` — its middleware adds an admin
JWT to every request, so the REST API v2 needs no credentials here (test-local config, nothing hard-coded).
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.local_airflow import AIRFLOW, airflow_environ  # noqa: E402

COMPONENTS = {
    "api-server": lambda port: ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
    "scheduler": lambda port: ["scheduler", "--skip-serve-logs"],
    "dag-processor": lambda port: ["dag-processor"],
    "triggerer": lambda port: ["triggerer", "--skip-serve-logs"],
}
DAG_IDS = ("deploy_app", "migrate_app")
STARTUP_TIMEOUT = 150
TERMINAL_RUN_STATES = {"success", "failed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with_env(name: str, value: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process of ours whose environment has ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
        if needle in environ and cmdline:      # zombies have an empty cmdline: already dead
            found.append((int(entry), cmdline))
    return found


def processes_in_sessions(sids: set[int]) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in one of the sessions ``sids``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()     # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) in sids and fields[0] != "Z":
            found.append((int(entry), cmdline))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@dataclass
class AirflowStack:
    home: Path
    env: dict[str, str]
    port: int
    report_dir: Path
    logs: dict[str, Path]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2"

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """``airflow <args>`` against this stack; stdout and stderr merged into ``.stdout``."""
        return subprocess.run([AIRFLOW, *args], env=self.env, cwd=ROOT, text=True, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", timeout=30, **kwargs)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.api}{path}", json=body, timeout=30)

    def log(self, component: str) -> str:
        return self.logs[component].read_text(errors="replace")

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"----- {name} -----\n{self.log(name)[-chars:]}" for name in self.logs
                         if self.logs[name].exists())      # a component not started yet has none

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"Airflow component(s) exited: {dead}\n{self.logs_tail()}"

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict:
        """Poll the REST API until the run is success/failed; returns the run."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
            assert response.status_code == 200, response.text
            run = response.json()
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"{dag_id} run {run_id} still {run['state']} after {timeout}s: "
                                     f"{self.task_states(dag_id, run_id)}\n{self.logs_tail()}")
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert response.status_code == 200, response.text
        return {ti["task_id"]: ti for ti in response.json()["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {task_id: ti["state"] for task_id, ti in self.task_instances(dag_id, run_id).items()}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[dict]:
        """The task's log as the UI shows it: the worker's log and the triggerer's log of its trigger, as
        structured entries (each has an ``event``; the first group names the files it was read from)."""
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                            params={"full_content": "true"}, headers={"Accept": "application/json"})
        assert response.status_code == 200, response.text
        return [entry if isinstance(entry, dict) else {"event": str(entry)} for entry in response.json()["content"]]

    def task_events(self, dag_id: str, run_id: str, task_id: str) -> list[tuple[str, int]]:
        """(event, try_number) of the task instance's audit log (Event Log in the UI), oldest first."""
        response = self.get("/eventLogs", params={"dag_id": dag_id, "run_id": run_id, "task_id": task_id,
                                                  "limit": 100})
        assert response.status_code == 200, response.text
        entries = [e for e in response.json()["event_logs"]
                   if (e["dag_id"], e["run_id"], e["task_id"]) == (dag_id, run_id, task_id)]
        return [(e["event"], e["try_number"]) for e in sorted(entries, key=lambda e: e["event_log_id"])]

    def job_ids(self, job_type: str) -> set[int]:
        response = self.get("/jobs", params={"job_type": job_type, "limit": 100})
        assert response.status_code == 200, response.text
        return {job["id"] for job in response.json()["jobs"] if job["job_type"] == job_type}

    def _launch(self, name: str) -> None:
        with open(self.logs[name], "wb") as out:
            self.processes[name] = subprocess.Popen(
                [AIRFLOW, *COMPONENTS[name](self.port)], env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        """The api-server first, the other components once it answers HTTP: tasks reach the metadata DB only
        through its execution API, and a scheduled DAG (catchup=False) gets a run as soon as it is parsed, so a
        scheduler started alongside could run a task before the api-server serves (its first call fails)."""
        self._launch("api-server")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            self.check_alive()
            try:
                httpx.get(f"{self.api}/monitor/health", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"api-server not answering after {STARTUP_TIMEOUT}s\n{self.logs_tail()}")
                time.sleep(0.5)
        for name in COMPONENTS:
            if name != "api-server":
                self._launch(name)

    def wait_ready(self) -> None:
        """Until the API answers and the dag-processor has registered both DAGs, un-paused."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = "api-server"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                dags = {dag_id: self.get(f"/dags/{dag_id}") for dag_id in DAG_IDS}
            except httpx.TransportError:
                time.sleep(1)
                continue
            pending = {dag_id: r.status_code for dag_id, r in dags.items() if r.status_code != 200}
            if not pending:
                assert all(not r.json()["is_paused"] for r in dags.values()), {d: r.json() for d, r in dags.items()}
                return
            time.sleep(1)
        raise AssertionError(f"Airflow not ready after {STARTUP_TIMEOUT}s (pending: {pending})\n{self.logs_tail()}")

    def stop(self) -> None:
        """SIGTERM every component's process group, SIGKILL what is left after a grace period, reap."""
        for process in self.processes.values():
            if _group_alive(process.pid):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_group_alive(p.pid) for p in self.processes.values()):
            for process in self.processes.values():
                process.poll()
            time.sleep(0.2)
        for process in self.processes.values():
            if _group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One two-node cluster for the module: the Airflow components are started pointing at its kubeconfig."""
    from kubesim.cluster import Cluster

    work = tmp_path_factory.mktemp("kubesim")
    with Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.2, max_grace_seconds=1.0,
                 work_dir=str(work / "cluster"), kubeconfig_path=str(work / "kubeconfig")) as c:
        yield c


@pytest.fixture(scope="module")
def kube_client(cluster):
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=cluster.kubeconfig_path)
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def airflow_extra_env() -> dict[str, str]:
    """Variables added to the components' environment (after the stack's own). Override it in a test module
    (a module-scoped fixture of the same name) to start that module's stack differently, e.g. with
    ``K8SMOVE_MAINTENANCE_SCHEDULE``, which the dag-processor reads when it parses node_maintenance."""
    return {}


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, cluster, airflow_extra_env):
    home = tmp_path_factory.mktemp("airflow-home")
    report_dir = home / "reports"
    port = free_port()
    while port == 8080:
        port = free_port()
    env = {
        **os.environ,
        **airflow_environ(home, kubeconfig=cluster.kubeconfig_path, report_dir=report_dir),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        # Tasks reach the metadata DB only through the api-server's execution API: on our port, not 8080.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Every component signs/verifies the same JWTs (workload tokens, UI/API tokens): one secret per stack.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        # Pick the DAGs up fast; do not re-parse often on a 2-core machine.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # Log servers are not needed (every log is a local file the api-server reads); their ports are
        # still moved off the defaults in case a component starts one anyway.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        **airflow_extra_env,
    }
    env.pop("KUBECONFIG", None)
    migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=ROOT, text=True, timeout=300,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert migrated.returncode == 0, migrated.stdout[-5000:]

    stack = AirflowStack(home=home, env=env, port=port, report_dir=report_dir,
                         logs={name: home / f"{name}.out" for name in COMPONENTS})
    try:
        stack.start()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
        assert not any(_group_alive(p.pid) for p in stack.processes.values())
        # Anything else this stack started -- in the components' sessions, or anywhere with this AIRFLOW_HOME
        # (e.g. an availability probe in its own session, left running by a run that failed before stop_probe;
        # processes that set their title lose a readable environ, hence the sessions too): killed by pid so
        # nothing leaks, and reported as a failure.
        left = sorted(set(processes_in_sessions({p.pid for p in stack.processes.values()}))
                      | set(processes_with_env("AIRFLOW_HOME", str(home))))
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert left == [], f"processes left behind: {left}"
