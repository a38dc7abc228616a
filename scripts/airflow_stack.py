"""A full local Airflow on this machine: api-server, scheduler, dag-processor and triggerer as separate processes
(LocalExecutor, SQLite metadata DB in a throw-away AIRFLOW_HOME), the real scheduler path the end-to-end tests,
the benchmarks and ``make ui`` share.

Auth: the simple auth manager; ``all_admins=True`` (tests, benchmarks) makes its middleware add an admin JWT to
every request, so the REST API v2 needs no credentials.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kubesim.dataplane.processes import _group_alive  # noqa: F401  (the e2e conftest imports it from here)
from scripts.local_airflow import AIRFLOW, ROOT, airflow_environ

COMPONENTS = {
    "api-server": lambda port: ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
    "scheduler": lambda port: ["scheduler", "--skip-serve-logs"],
    "dag-processor": lambda port: ["dag-processor"],
    "triggerer": lambda port: ["triggerer", "--skip-serve-logs"],
}
DAG_IDS = ("deploy_app", "migrate_app")
STARTUP_TIMEOUT = 150
TERMINAL_RUN_STATES = {"success", "failed"}


def _ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")


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


def _live_processes(column: int, ids: set[int]) -> list[tuple[int, str]]:
    """(pid, command line) of every live (not zombie) process whose /proc stat field ``column`` (after
    "pid (comm) ": 0 state, 2 pgrp, 3 session) is one of ``ids``."""
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
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[column]) in ids and fields[0] != "Z":
            found.append((int(entry), cmdline))
    return found


def processes_in_sessions(sids: set[int]) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in one of the sessions ``sids``."""
    return _live_processes(3, sids)


@dataclass
class AirflowStack:
    home: Path
    env: dict[str, str]
    port: int
    report_dir: Path
    logs: dict[str, Path]
    dag_ids: tuple[str, ...] = DAG_IDS
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
        if dead:
            raise RuntimeError(f"Airflow component(s) exited: {dead}\n{self.logs_tail()}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict:
        """Poll the REST API until the run is success/failed; returns the run."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
            _ok(response)
            run = response.json()
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout}s: "
                                     f"{self.task_states(dag_id, run_id)}\n{self.logs_tail()}")
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        _ok(response)
        return {ti["task_id"]: ti for ti in response.json()["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {task_id: ti["state"] for task_id, ti in self.task_instances(dag_id, run_id).items()}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[dict]:
        """The task's log as the UI shows it: the worker's log and the triggerer's log of its trigger, as
        structured entries (each has an ``event``; the first group names the files it was read from)."""
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                            params={"full_content": "true"}, headers={"Accept": "application/json"})
        _ok(response)
        return [entry if isinstance(entry, dict) else {"event": str(entry)} for entry in response.json()["content"]]

    def task_events(self, dag_id: str, run_id: str, task_id: str) -> list[tuple[str, int]]:
        """(event, try_number) of the task instance's audit log (Event Log in the UI), oldest first."""
        response = self.get("/eventLogs", params={"dag_id": dag_id, "run_id": run_id, "task_id": task_id,
                                                  "limit": 100})
        _ok(response)
        entries = [e for e in response.json()["event_logs"]
                   if (e["dag_id"], e["run_id"], e["task_id"]) == (dag_id, run_id, task_id)]
        return [(e["event"], e["try_number"]) for e in sorted(entries, key=lambda e: e["event_log_id"])]

    def job_ids(self, job_type: str) -> set[int]:
        response = self.get("/jobs", params={"job_type": job_type, "limit": 100})
        _ok(response)
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
                    raise TimeoutError(f"api-server not answering after {STARTUP_TIMEOUT}s\n{self.logs_tail()}")
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
                dags = {dag_id: self.get(f"/dags/{dag_id}") for dag_id in self.dag_ids}
            except httpx.TransportError:
                time.sleep(1)
                continue
            pending = {dag_id: r.status_code for dag_id, r in dags.items() if r.status_code != 200}
            if not pending:
                if paused := [d for d, r in dags.items() if r.json()["is_paused"]]:
                    raise RuntimeError(f"DAGs registered paused: {paused}")
                return
            time.sleep(1)
        raise TimeoutError(f"Airflow not ready after {STARTUP_TIMEOUT}s (pending: {pending})\n{self.logs_tail()}")

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
        # SIGKILL is delivered at once but a member's exit may lag (it may be in uninterruptible sleep).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_group_alive(p.pid) for p in self.processes.values()):
            time.sleep(0.1)


# The scheduler's idle loop picks up a finished task within 0.1 s instead of 1 s (each hand-off between tasks
# waits for it); its CPU cost is measured in BENCHMARKS.md ("Airflow's reaction time"). The triggerer's loop
# (1 s at most) is not configurable.
FAST_REACTION = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1"}


def stack_environ(home: Path, kubeconfig: str, report_dir: Path, port: int, all_admins: bool = True,
                  fast: bool = True, extra: dict | None = None) -> dict[str, str]:
    """The components' environment: this repo's DAGs, ``kubernetes_default`` -> ``kubeconfig``, the api-server on
    ``port`` (never 8080, the demo Service's default), one JWT secret for every component."""
    env = {
        **os.environ,
        **airflow_environ(home, kubeconfig=kubeconfig, report_dir=report_dir),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(all_admins),
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
        **(FAST_REACTION if fast else {}),
        **(extra or {}),
    }
    env.pop("KUBECONFIG", None)
    return env


def start_stack(home: Path, kubeconfig: str, dag_ids=DAG_IDS, **environ) -> "AirflowStack":
    """Migrate the metadata DB and start the four components on a free port; ready when it returns."""
    port = free_port()
    while port == 8080:
        port = free_port()
    report_dir = home / "reports"
    env = stack_environ(home, kubeconfig, report_dir, port, **environ)
    migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=ROOT, text=True, timeout=300,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if migrated.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{migrated.stdout[-5000:]}")
    stack = AirflowStack(home=home, env=env, port=port, report_dir=report_dir,
                         logs={name: home / f"{name}.out" for name in COMPONENTS}, dag_ids=tuple(dag_ids))
    try:
        stack.start()
        stack.wait_ready()
    except BaseException:
        stack.stop()
        raise
    return stack


def leftovers(stack: "AirflowStack") -> list[tuple[int, str]]:
    """Processes this stack started that are still alive (in the components' sessions, or with its AIRFLOW_HOME:
    e.g. an availability probe in its own session, left running by a run that failed before stop_probe;
    processes that set their title lose a readable environ, hence the sessions too)."""
    return sorted(set(processes_in_sessions({p.pid for p in stack.processes.values()}))
                  | set(processes_with_env("AIRFLOW_HOME", str(stack.home))))
