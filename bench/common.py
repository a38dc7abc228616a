"""What every benchmark shares: timing and percentiles, memory readings, a cluster with real clients on it,
manifests, waiting, and the Markdown result table.

Benchmarks are not tests: they print figures (and a verdict against the target where an issue set one),
they do not assert. Each benchmark module exposes ``run() -> Result``.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(REPO_ROOT, "plugins")   # k8smove, operators: importable as Airflow imports them
for _path in (REPO_ROOT, PLUGINS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from kubesim.cluster import Cluster  # noqa: E402
from kubesim.resources import DEPLOYMENTS, NODES, PODS  # noqa: E402


# ---- timing ----------------------------------------------------------------------------------------------
def now() -> float:
    return time.perf_counter()


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of unsorted values (fraction 0.5 for p50)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary_ms(seconds: list[float]) -> dict:
    """p50/p95/max in milliseconds of samples taken in seconds."""
    return {"n": len(seconds), "p50": ms(percentile(seconds, 0.5)), "p95": ms(percentile(seconds, 0.95)),
            "max": ms(max(seconds))}


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = now()
        fn()
        samples.append(now() - start)
    return samples


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# ---- memory ----------------------------------------------------------------------------------------------
def rss_mib(pid: int | None = None) -> float:
    """Resident set size (VmRSS) of a process, this one by default."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def pss_mib(pid: int) -> float:
    """Proportional set size (shared pages split between their users) from smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return round(int(line.split()[1]) / 1024, 2)
    raise RuntimeError("no Pss")


def child_pids() -> list[int]:
    import psutil
    return [p.pid for p in psutil.Process().children(recursive=True)]


# ---- cluster and clients ---------------------------------------------------------------------------------
def node_names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


@contextlib.contextmanager
def cluster(**overrides) -> Iterator[Cluster]:
    """A started kubesim Cluster (quiet logs); stopped, with everything it ran, on exit."""
    import logging
    logging.getLogger("kubesim").setLevel(logging.ERROR)
    with Cluster(**overrides) as c:
        wait_for(lambda: len(store(c).snapshot(NODES)[0]) == len(c.config.nodes), 120, 0.2, what="nodes")
        yield c


def store(c: Cluster):
    """The cluster's objects: kubesim's in-process store, or on the real control plane the admin's RemoteStore
    (the same calls, over HTTPS)."""
    return c.store if c.store is not None else c.admin


def api_client(c: Cluster):
    """The real ``kubernetes`` client over HTTP, configured from the cluster's kubeconfig."""
    from kubernetes import config
    return config.new_client_from_config(config_file=c.kubeconfig_path)


class Kubectl:
    """The kubectl on PATH against one cluster, with a private HOME (its own discovery cache)."""

    def __init__(self, c: Cluster):
        self.kubeconfig = c.kubeconfig_path
        self.home = os.path.join(c.config.work_dir, "kubectl-home")   # removed with the cluster
        os.makedirs(self.home, exist_ok=True)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], capture_output=True,
                                text=True, timeout=timeout,
                                env={"HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result


# ---- availability ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def probing(url: str, rate: float, settle_seconds: float, write_rate: float = 0.0) -> Iterator[dict]:
    """plugins/k8smove/availability.py ``run()`` on ``url`` (GET / at ``rate``/s, POST /rows at
    ``write_rate``/s) while the block runs, with ``settle_seconds`` of steady baseline before and after;
    yields a dict that holds the probe's summary once the block has ended."""
    from k8smove import availability

    wait_for(lambda: _answers(url), 30, what=f"{url} to answer")
    stop, record, out = threading.Event(), availability.ProbeRecord(), {}
    thread = threading.Thread(target=availability.run, args=(url, rate, write_rate, stop, record), daemon=True)
    thread.start()
    time.sleep(settle_seconds)   # a steady baseline before the move
    try:
        yield out
        time.sleep(settle_seconds)   # and after it
    finally:
        stop.set()
        thread.join(timeout=10)
    out.update(record.summary(time.monotonic()))


def _answers(url: str) -> bool:
    from k8smove import availability
    try:
        return availability._request(url)[0] == 200
    except OSError:
        return False


# ---- manifests and states --------------------------------------------------------------------------------
def deployment(name: str, replicas: int, node: str | None, image: str = "demo/app:1", namespace: str = "default",
               max_surge: int | str = 1, max_unavailable: int | str = 0, port: int | None = None) -> dict:
    container = {"name": "app", "image": image}
    if port:
        container["ports"] = [{"name": "http", "containerPort": port}]
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1}
    pod_spec = {"containers": [container], "terminationGracePeriodSeconds": 1}
    if node:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}}}


def service(name: str, port: int, namespace: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": "http"}]}}


def rolled_out(d: dict) -> bool:
    s, want = d.get("status") or {}, d["spec"]["replicas"]
    return (s.get("observedGeneration") == d["metadata"]["generation"] and s.get("updatedReplicas", 0) == want
            and s.get("replicas", 0) == want and s.get("availableReplicas", 0) == want)


def all_rolled_out(c: Cluster, namespace: str | None = None) -> bool:
    return all(rolled_out(d) for d in store(c).snapshot(DEPLOYMENTS, namespace)[0])


def pod_ready(pod: dict) -> bool:
    return any(cond["type"] == "Ready" and cond["status"] == "True"
               for cond in (pod.get("status") or {}).get("conditions") or [])


def pods(c: Cluster, namespace: str | None = None) -> list[dict]:
    return store(c).snapshot(PODS, namespace)[0]


# ---- results ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    """One benchmark's figures: rows of (metric, value, target, verdict) plus free-form notes."""
    name: str
    command: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def add(self, metric: str, value, target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("met" if met else "NOT met")
        self.rows.append((metric, str(value), target, verdict))

    def markdown(self) -> str:
        lines = [f"### {self.name}", "", f"`{self.command}`", "", "| metric | value | target | verdict |",
                 "|---|---|---|---|"]
        lines += [f"| {m} | {v} | {t} | {r} |" for m, v, t, r in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def machine_facts() -> str:
    import platform
    return (f"nproc {os.cpu_count()}, Python {platform.python_version()}, {platform.system()} {platform.release()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def save(key: str, result: Result) -> None:
    """Keep the raw figures next to the printed table (bench/results/<name>.json, not committed)."""
    out = os.path.join(REPO_ROOT, "bench", "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{key}.json"), "w") as f:
        json.dump({"machine": machine_facts(), "rows": result.rows, "notes": result.notes, "raw": result.raw},
                  f, indent=1, default=str)



def processes_of_pods(uids: set[str]) -> list[int]:
    """Pids of every process on the machine marked as belonging to one of these pods (KUBESIM_POD_UID in
    its environment, which children inherit): catches processes that outlived or escaped their parent."""
    marks = {f"KUBESIM_POD_UID={uid}".encode() for uid in uids}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = set(f.read().split(b"\0"))
        except OSError:
            continue
        if environ & marks:
            found.append(int(entry))
    return found


def create_app(c: Cluster, name: str, replicas: int, node: str | None, image: str = "nginx", port: int = 8080,
               namespace: str = "default") -> None:
    """A Deployment and its Service (ClusterIP allocated by the API server) through the real client."""
    from kubernetes import client
    api = api_client(c)
    client.AppsV1Api(api).create_namespaced_deployment(
        namespace, deployment(name, replicas, node, image=image, port=port, namespace=namespace))
    client.CoreV1Api(api).create_namespaced_service(namespace, service(name, port, namespace))


def ready_pods(c: Cluster, app: str, namespace: str = "default") -> list[dict]:
    return [p for p in pods(c, namespace) if (p["metadata"].get("labels") or {}).get("app") == app
            and pod_ready(p) and not p["metadata"].get("deletionTimestamp")]


# What a process of this benchmark's tree is, by its command line: the first pattern found names its share.
CPU_SHARES = (("postgres", ("postgres", "pg_basebackup", "psql", "initdb", "pg_ctl", "pg_isready")),
              ("airflow", ("airflow",)),
              ("control plane", ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")),
              ("probes", ("availability.py", "k8smove.availability")),
              ("kubectl", ("kubectl",)),
              ("apps", ("demo_app", "responder.py")),
              ("kubesim's Service proxy", ("kubesim.proxy_process",)))
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _share_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    return next((share for share, patterns in CPU_SHARES if any(p in cmdline for p in patterns)), "other")


class TreeCpu:
    """CPU seconds spent by this process and its descendants while in the ``with`` block, by share (postgres,
    airflow, control plane, …; this process itself: kubesim's nodes, their pods' supervisors, its API server), from
    /proc sampled every ``interval`` s. The work each mode costs, whatever else the machine runs. A lower bound: a
    process that lives less than one interval (a short psql) is missed unless its parent reaps it before sampling
    ends (then it counts in none)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.root = interval, os.getpid()
        self.seen: dict[int, list] = {}       # pid -> [share, CPU seconds at first sight, latest]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, first: bool = False) -> None:
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _cpu_seconds(int(entry))) is not None:
                parents[int(entry)], times[int(entry)] = stat
        for pid, cpu in times.items():
            ancestor = pid
            while ancestor not in (self.root, 0, 1) and ancestor in parents:
                ancestor = parents[ancestor]
            if ancestor != self.root:
                continue
            if pid not in self.seen:
                share = "this process (kubesim's nodes)" if pid == self.root else _share_of(pid)
                self.seen[pid] = [share, cpu if first else 0.0, cpu]
            self.seen[pid][2] = cpu

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "TreeCpu":
        self._sample(first=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()

    def shares(self) -> dict[str, float]:
        """CPU seconds by share, the total under "total"."""
        out: dict[str, float] = {}
        for share, start, latest in self.seen.values():
            out[share] = out.get(share, 0.0) + latest - start
        out = {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
        out["total"] = round(sum(v for k, v in out.items()), 1)
        return out
