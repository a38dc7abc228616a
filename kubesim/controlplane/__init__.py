"""The real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), started
from the binaries `make controlplane` builds from source (controlplane/ at the repository root).

    with ControlPlane() as cp:
        subprocess.run(["kubectl", "--kubeconfig", cp.kubeconfig_path, "get", "ns"])

Every listener is on 127.0.0.1 at a free port; all traffic is TLS with a throwaway CA (pki.py), client
certificates for the admin and the components. Each process runs in its own process group and gets SIGKILL
when the thread that started it dies (PR_SET_PDEATHSIG, as the data plane's processes): they are all
started from one spawner thread that lives until stop(), so nothing outlives the ControlPlane, even a
SIGKILLed Python. Phase 1 of issue 14: no nodes yet (pods stay Pending).
"""
from __future__ import annotations

import base64
import concurrent.futures
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..dataplane import processes
from . import audit
from .etcdreset import TXN_OPS, EtcdBaseline
from .pki import CertFiles, Pki

REPO_ROOT = Path(__file__).resolve().parents[2]
# `make controlplane` points this link at the build of the pinned versions (.cache/controlplane/<version>-<key>).
DEFAULT_BIN_DIR = REPO_ROOT / ".cache" / "controlplane" / "current" / "bin"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
API_SANS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local")


class ControlPlaneError(RuntimeError):
    pass


def find_bin_dir(bin_dir: str | os.PathLike | None = None) -> Path:
    """Where the four binaries are: the argument, $KUBESIM_CONTROLPLANE_BIN, or make's build cache."""
    path = Path(bin_dir or os.environ.get("KUBESIM_CONTROLPLANE_BIN") or DEFAULT_BIN_DIR)
    missing = [c for c in COMPONENTS if not os.access(path / c, os.X_OK)]
    if missing:
        raise ControlPlaneError(
            f"control plane binaries missing in {path}: {', '.join(missing)}; build them with `make controlplane` "
            "(needs the Go toolchain) or set KUBESIM_CONTROLPLANE_BIN to a directory holding "
            + ", ".join(COMPONENTS))
    return path


def _free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 (all held open together so none is handed out twice)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def write_kubeconfig(path: str, server: str, ca_file: str, client: CertFiles, user: str,
                     cluster: str = "kubesim-controlplane") -> str:
    """A self-contained kubeconfig (certificates inline). JSON is YAML, so no YAML writer is needed."""
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(client.cert),
                                          "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    return path


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log_path: str
    argv: list[str] = field(default_factory=list)   # restart() starts the same command again


@dataclass
class StartupTimes:
    """Seconds from start() to each milestone."""
    pki: float = 0.0
    etcd_healthy: float = 0.0
    apiserver_ready: float = 0.0
    components_healthy: float = 0.0
    ready: float = 0.0  # the default ServiceAccount exists: pods can be created


@dataclass
class ControlPlane:
    bin_dir: str | None = None
    work_dir: str | None = None  # default: a temporary directory removed by stop()
    kubeconfig_path: str | None = None  # default: <work_dir>/admin.kubeconfig
    start_timeout: float = 120.0
    verbosity: int = 1  # --v of the Kubernetes components (logs in <work_dir>/<component>.log)
    # kube-controller-manager --node-monitor-grace-period: how long a node may go without a Lease renewal
    # before the node-lifecycle controller marks it Unknown and taints it (None: upstream's default, 50 s).
    node_monitor_grace_seconds: float | None = None
    apiserver_args: tuple[str, ...] = ()   # extra kube-apiserver flags (tests: e.g. --watch-cache-sizes)
    service_cidr: str = SERVICE_CIDR       # --service-cluster-ip-range (kubesim.addresses gives each cluster one)
    url: str = field(default="", init=False)
    times: StartupTimes = field(default_factory=StartupTimes, init=False)

    def __post_init__(self):
        self._procs: list[_Proc] = []
        self._own_work_dir = False
        self._spawner: concurrent.futures.ThreadPoolExecutor | None = None
        self._ssl: ssl.SSLContext | None = None
        self.pki: Pki | None = None
        self.audit: audit.AuditLog | None = None      # what clients asked (the audit log), as a request log
        self.etcd: EtcdBaseline | None = None         # record() the state, reset() back to it
        self.front_proxy_client: CertFiles | None = None   # what a proxy in front asserts callers with (faultproxy.py)
        self._health: dict[str, tuple] = {}           # component -> _wait_http's (url, context, expect)

    @property
    def service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP: the first address of the range."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    # -- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ControlPlane":
        bins = find_bin_dir(self.bin_dir)
        t0 = time.monotonic()
        if self.work_dir is None:
            self.work_dir = tempfile.mkdtemp(prefix="kubesim-controlplane-")
            self._own_work_dir = True
        os.makedirs(self.work_dir, exist_ok=True)
        # One long-lived thread starts every process: PR_SET_PDEATHSIG fires when the *starting thread* dies.
        self._spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="controlplane")
        try:
            self._start(bins, t0)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, bins: Path, t0: float) -> None:
        wd = self.work_dir
        pki = self.pki = Pki(os.path.join(wd, "pki"))
        ca = pki.ca.cert
        etcd_port, etcd_peer_port, api_port, kcm_port, sched_port = _free_ports(5)
        etcd_server = pki.issue("etcd", "kubesim-etcd", server=True, client=True, dns_names=("localhost",),
                                ips=(HOST,))
        etcd_client = pki.issue("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True)
        api_serving = pki.issue("apiserver", "kube-apiserver", server=True, dns_names=API_SANS,
                                ips=(HOST, self.service_ip))
        kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                   ("kubeadm:cluster-admins",), client=True)
        admin = pki.issue("admin", "kubesim-admin", ("system:masters",), client=True)
        kcm_client = pki.issue("controller-manager", "system:kube-controller-manager", client=True)
        sched_client = pki.issue("scheduler", "system:kube-scheduler", client=True)
        kcm_serving = pki.issue("controller-manager-serving", "kube-controller-manager", server=True,
                                dns_names=("localhost",), ips=(HOST,))
        sched_serving = pki.issue("scheduler-serving", "kube-scheduler", server=True, dns_names=("localhost",),
                                  ips=(HOST,))
        sa = pki.service_account_keys()
        # The aggregation layer's front proxy has a CA of its own, as kubeadm sets it up: a certificate from the
        # client CA must not be able to assert X-Remote-User headers.
        front_proxy = Pki(os.path.join(wd, "pki", "front-proxy"), ca_name="kubesim-front-proxy-ca")
        proxy_client = front_proxy.issue("front-proxy-client", "front-proxy-client", client=True)
        self.ca_file, self.admin_cert, self.front_proxy_client = ca, admin, proxy_client
        self.url = f"https://{HOST}:{api_port}"
        self.kubeconfig_path = self.kubeconfig_path or os.path.join(wd, "admin.kubeconfig")
        kcm_kubeconfig = write_kubeconfig(os.path.join(wd, "controller-manager.kubeconfig"), self.url, ca,
                                          kcm_client, "system:kube-controller-manager")
        sched_kubeconfig = write_kubeconfig(os.path.join(wd, "scheduler.kubeconfig"), self.url, ca, sched_client,
                                            "system:kube-scheduler")
        self._ssl = ssl.create_default_context(cafile=ca)
        self._ssl.load_cert_chain(admin.cert, admin.key)
        self.times.pki = time.monotonic() - t0
        deadline = t0 + self.start_timeout

        etcd_url, peer_url = f"https://{HOST}:{etcd_port}", f"https://{HOST}:{etcd_peer_port}"
        etcd = self._spawn("etcd", [
            str(bins / "etcd"), "--name=kubesim", f"--data-dir={os.path.join(wd, 'etcd')}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=kubesim={peer_url}", "--initial-cluster-state=new",
            f"--cert-file={etcd_server.cert}", f"--key-file={etcd_server.key}", "--client-cert-auth",
            f"--trusted-ca-file={ca}", f"--peer-cert-file={etcd_server.cert}", f"--peer-key-file={etcd_server.key}",
            "--peer-client-cert-auth", f"--peer-trusted-ca-file={ca}",
            # A throwaway cluster: no fsync (as envtest does) keeps etcd from stalling on a busy disk.
            "--unsafe-no-fsync", "--log-level=warn",
            f"--max-txn-ops={TXN_OPS * 2}"])   # EtcdBaseline.reset's transactions
        self.etcd_url, self.etcd_client = etcd_url, etcd_client   # for tests that act on etcd (compaction)
        etcd_ssl = ssl.create_default_context(cafile=ca)
        etcd_ssl.load_cert_chain(etcd_client.cert, etcd_client.key)
        self._health["etcd"] = (f"{etcd_url}/health", etcd_ssl, b'"health":"true"')
        self._wait_health(etcd, deadline)
        self.etcd = EtcdBaseline(etcd_url, etcd_ssl)
        self.times.etcd_healthy = time.monotonic() - t0

        api = self._spawn("kube-apiserver", [
            str(bins / "kube-apiserver"), f"--v={self.verbosity}",
            f"--etcd-servers={etcd_url}", f"--etcd-cafile={ca}", f"--etcd-certfile={etcd_client.cert}",
            f"--etcd-keyfile={etcd_client.key}",
            f"--bind-address={HOST}", f"--advertise-address={HOST}", f"--secure-port={api_port}",
            f"--tls-cert-file={api_serving.cert}", f"--tls-private-key-file={api_serving.key}",
            f"--client-ca-file={ca}", "--authorization-mode=Node,RBAC",
            # NodeRestriction on top of the default plugins (NamespaceLifecycle, LimitRanger, ServiceAccount,
            # PodSecurity, ResourceQuota, webhooks …), as kubeadm configures it.
            "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--service-account-issuer={SA_ISSUER}", f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca}", "--kubelet-preferred-address-types=InternalIP",
            f"--requestheader-client-ca-file={front_proxy.ca.cert}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={proxy_client.cert}", f"--proxy-client-key-file={proxy_client.key}",
            # Endpoints may not hold loopback addresses, so the `kubernetes` Service gets none (the API server
            # would retry and log that every 10 s); clients reach the API server at 127.0.0.1 directly.
            "--endpoint-reconciler-type=none",
            "--profiling=false", *audit.apiserver_args(wd), *self.apiserver_args])
        self.audit = audit.AuditLog(os.path.join(wd, "audit.log"), self.url, self._ssl)
        self._health["kube-apiserver"] = (f"{self.url}/readyz", None, None)
        self._wait_health(api, deadline)
        self.times.apiserver_ready = time.monotonic() - t0
        write_kubeconfig(self.kubeconfig_path, self.url, ca, admin, "kubesim-admin")

        kcm = self._spawn("kube-controller-manager", [
            str(bins / "kube-controller-manager"), f"--v={self.verbosity}", f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}", f"--authorization-kubeconfig={kcm_kubeconfig}",
            f"--bind-address={HOST}", f"--secure-port={kcm_port}", f"--client-ca-file={ca}",
            f"--tls-cert-file={kcm_serving.cert}", f"--tls-private-key-file={kcm_serving.key}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa.key}", f"--root-ca-file={ca}",
            f"--cluster-signing-cert-file={pki.ca.cert}", f"--cluster-signing-key-file={pki.ca.key}",
            "--cluster-name=kubesim", "--profiling=false",
            *([f"--node-monitor-grace-period={self.node_monitor_grace_seconds:g}s"]
              if self.node_monitor_grace_seconds else [])])
        sched = self._spawn("kube-scheduler", [
            str(bins / "kube-scheduler"), f"--v={self.verbosity}", f"--kubeconfig={sched_kubeconfig}",
            f"--authentication-kubeconfig={sched_kubeconfig}", f"--authorization-kubeconfig={sched_kubeconfig}",
            f"--bind-address={HOST}", f"--secure-port={sched_port}", f"--client-ca-file={ca}",
            f"--tls-cert-file={sched_serving.cert}", f"--tls-private-key-file={sched_serving.key}",
            "--leader-elect=false", "--profiling=false"])
        self._health["kube-controller-manager"] = (f"https://{HOST}:{kcm_port}/healthz", None, None)
        self._health["kube-scheduler"] = (f"https://{HOST}:{sched_port}/readyz", None, None)
        self._wait_health(kcm, deadline)
        self._wait_health(sched, deadline)
        self.times.components_healthy = time.monotonic() - t0
        # The ServiceAccount admission plugin refuses pods until the controller-manager has made this one.
        self._wait_http(kcm, f"{self.url}/api/v1/namespaces/default/serviceaccounts/default", deadline)
        self.times.ready = time.monotonic() - t0

    def stop(self) -> None:
        """Controllers and scheduler first, then the API server, then etcd; SIGKILL for each group after 10 s."""
        for group in (("kube-controller-manager", "kube-scheduler"), ("kube-apiserver",), ("etcd",)):
            stops = [(p.popen, signal.SIGTERM) for p in self._procs if p.name in group]
            if stops:
                processes.stop(stops, grace_seconds=10)
        self._procs = []
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None
        if self._own_work_dir and self.work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self._own_work_dir = False

    def restart(self, component: str, down_seconds: float = 0.0, stop_signal: int = signal.SIGKILL) -> float:
        """Kill ``component`` (SIGKILL: a crash, by default) and start it again with the same flags, ports,
        certificates and data after ``down_seconds``, as a supervisor (systemd, the kubelet of a static pod) does;
        returns once it is healthy again, and after etcd once the API server is ready again. Clients meanwhile get
        connection refused (or, with etcd down, the API server's errors), and their watches end. Returns the
        seconds from the kill to healthy."""
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, not {component!r}")
        old = next((p for p in self._procs if p.name == component), None)
        if old is None:
            raise ControlPlaneError(f"{component} is not running")
        t0 = time.monotonic()
        processes.stop([(old.popen, stop_signal)], grace_seconds=10)
        self._procs.remove(old)
        time.sleep(down_seconds)
        new = self._spawn(component, old.argv)
        deadline = time.monotonic() + self.start_timeout
        self._wait_health(new, deadline)
        if component == "etcd":   # the API server reconnects by itself; ready again once it has
            self._wait_health(next(p for p in self._procs if p.name == "kube-apiserver"), deadline)
        return time.monotonic() - t0

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Until the controller-manager has given every system namespace its `default` ServiceAccount and
        `kube-root-ca.crt`: what a fresh cluster has before anyone uses it (etcd.record() keeps it)."""
        deadline = time.monotonic() + timeout
        for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
            for path in ("serviceaccounts/default", "configmaps/kube-root-ca.crt"):
                proc = next(p for p in self._procs if p.name == "kube-controller-manager")
                self._wait_http(proc, f"{self.url}/api/v1/namespaces/{namespace}/{path}", deadline)

    # -- identities --------------------------------------------------------------------------------------------
    def node_credentials(self, node: str) -> CertFiles:
        """A kubelet's client certificate (CN system:node:<node>, O system:nodes): the Node authorizer and
        the NodeRestriction admission plugin then limit it to its own Node, Lease and pods, and the
        Secrets/ConfigMaps/volumes those pods reference."""
        return self.pki.issue(f"node-{node}", f"system:node:{node}", ("system:nodes",), client=True)

    def proxy_credentials(self) -> CertFiles:
        """kube-proxy's client certificate (CN system:kube-proxy): the bootstrap binding system:node-proxier
        lets it list and watch Services, EndpointSlices and Nodes, nothing more."""
        return self.pki.issue("kube-proxy", "system:kube-proxy", client=True)

    def kubeconfig_for(self, name: str, client: CertFiles, user: str) -> str:
        """A kubeconfig at <work_dir>/<name>.kubeconfig for this API server and a client certificate."""
        return write_kubeconfig(os.path.join(self.work_dir, f"{name}.kubeconfig"), self.url, self.ca_file, client,
                                user)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        log_path = os.path.join(self.work_dir, f"{name}.log")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.work_dir}
        popen = self._spawner.submit(processes.spawn, argv, env, log_path, self.work_dir).result()
        proc = _Proc(name, popen, log_path, argv)
        self._procs.append(proc)
        return proc

    def _wait_health(self, proc: _Proc, deadline: float) -> None:
        url, context, expect = self._health[proc.name]
        self._wait_http(proc, url, deadline, context=context, expect=expect)

    def _wait_http(self, proc: _Proc, url: str, deadline: float, context: ssl.SSLContext | None = None,
                   expect: bytes | None = None) -> None:
        """Poll url until it answers 200 (and contains `expect`); fail early with the log if proc exits."""
        last = "no answer"
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(f"{proc.name} exited with {proc.popen.returncode} while starting; "
                                        f"log {proc.log_path}:\n{self._tail(proc)}")
            try:
                with urllib.request.urlopen(url, timeout=5, context=context or self._ssl) as resp:
                    body = resp.read()
                    if resp.status == 200 and (expect is None or expect in body):
                        return
                    last = f"{resp.status} {body[:200]!r}"
            except urllib.error.HTTPError as e:
                last = f"{e.code} {e.read()[:300]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(0.1)
        raise ControlPlaneError(f"{proc.name}: {url} not ready within {self.start_timeout:.0f} s (last: {last}); "
                                f"log {proc.log_path}:\n{self._tail(proc)}")

    @staticmethod
    def _tail(proc: _Proc, lines: int = 40) -> str:
        try:
            return "\n".join(Path(proc.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- introspection (tests, benchmarks) ------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self._procs if p.popen.poll() is None}

    def log_path(self, name: str) -> str:
        return os.path.join(self.work_dir, f"{name}.log")

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each component now (VmRSS)."""
        result = {}
        for name, pid in self.pids().items():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    result[name] = int(line.split()[1]) * 1024
        return result

    def listening_sockets(self) -> dict[str, list[tuple[str, int]]]:
        """Each component's listening TCP sockets (address, port), from /proc (Linux)."""
        listening: dict[int, tuple[str, int]] = {}
        for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                if cols[3] != "0A":  # TCP_LISTEN
                    continue
                addr_hex, port_hex = cols[1].split(":")
                listening[int(cols[9])] = (_decode_address(addr_hex, family), int(port_hex, 16))
        result = {}
        for name, pid in self.pids().items():
            found = []
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:[") and int(target[8:-1]) in listening:
                    found.append(listening[int(target[8:-1])])
            result[name] = sorted(set(found))
        return result


def _decode_address(hex_addr: str, family: int) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp* prints the address as native-endian 32-bit words.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, words)
