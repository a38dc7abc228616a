"""Command line: ``python -m kubesim up|down|fault``."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from .config import ClusterConfig


def _pid_path(kubeconfig: str) -> str:
    return kubeconfig + ".pid"


def _log_path(kubeconfig: str) -> str:
    return kubeconfig + ".log"


def _up_parser(sub) -> None:
    up = sub.add_parser("up", help="start a cluster and serve until SIGTERM/Ctrl-C (or --detach)")
    defaults = ClusterConfig()
    up.add_argument("--nodes", default=",".join(defaults.nodes), help="comma-separated node names")
    up.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    up.add_argument("--host", default=defaults.host)
    up.add_argument("--port", type=int, default=defaults.port, help="0 = any free port")
    up.add_argument("--pod-startup", type=float, default=defaults.pod_startup_seconds, metavar="SECONDS")
    up.add_argument("--node-cpu", default=defaults.node_cpu)
    up.add_argument("--node-memory", default=defaults.node_memory)
    up.add_argument("--max-pods", type=int, default=defaults.max_pods)
    up.add_argument("--max-grace", type=float, default=defaults.max_grace_seconds, metavar="SECONDS",
                    help="cap on terminationGracePeriodSeconds")
    up.add_argument("--state-dir", help="persist objects here so a restarted kubesim keeps them")
    up.add_argument("--work-dir", help="volumes, process logs and data (default: a temporary directory)")
    up.add_argument("--images", dest="images_file", help="YAML image table merged over the built-in one")
    up.add_argument("--no-processes", action="store_true", help="control plane only: run no processes")
    up.add_argument("--control-plane", choices=("kubesim", "real"), default=defaults.control_plane,
                    help="real: kubesim's kubelets as nodes of the real kube-apiserver/-scheduler/-controller-manager "
                         "(built by `make controlplane`)")
    up.add_argument("--api-faults", action="store_true",
                    help="--control-plane real: clients go through the faults proxy, so `fault api-error|api-latency` "
                         "work (kubesim's own API server always injects them)")
    up.add_argument("--volume-attach", type=float, default=defaults.volume_attach_seconds, metavar="SECONDS",
                    help="how long a network-attached volume takes to attach to another node (0: at once)")
    up.add_argument("--detach", action="store_true", help="run in the background; stop with `down`")


def _config_from(args) -> ClusterConfig:
    return ClusterConfig(
        nodes=[n.strip() for n in args.nodes.split(",") if n.strip()], host=args.host, port=args.port,
        pod_startup_seconds=args.pod_startup, node_cpu=args.node_cpu, node_memory=args.node_memory,
        max_pods=args.max_pods, max_grace_seconds=args.max_grace, state_dir=args.state_dir,
        work_dir=args.work_dir, images_file=args.images_file, run_processes=not args.no_processes,
        control_plane=args.control_plane, volume_attach_seconds=args.volume_attach, api_faults=args.api_faults)


def _serve(args) -> int:
    from .cluster import Cluster

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(_config_from(args), kubeconfig_path=os.path.abspath(args.kubeconfig))
    cluster.start()
    with open(_pid_path(cluster.kubeconfig_path), "w") as f:
        f.write(str(os.getpid()))
    print(f"kubesim: API server {cluster.url}, nodes {','.join(cluster.config.nodes)}, "
          f"kubeconfig {cluster.kubeconfig_path}", flush=True)
    try:
        stop.wait()
    finally:
        cluster.stop()
        if os.path.exists(_pid_path(cluster.kubeconfig_path)):
            os.remove(_pid_path(cluster.kubeconfig_path))
        print("kubesim: stopped", flush=True)
    return 0


def _controlplane_parser(sub) -> None:
    cp = sub.add_parser("controlplane", help="the real Kubernetes control plane built by `make controlplane` "
                                             "(etcd, kube-apiserver, kube-controller-manager, kube-scheduler)")
    cp_sub = cp.add_subparsers(dest="cp_command", required=True)
    up = cp_sub.add_parser("up", help="start it and serve until SIGTERM/Ctrl-C (or --detach)")
    up.add_argument("--kubeconfig", required=True, help="where to write the admin kubeconfig")
    up.add_argument("--work-dir", help="certificates, etcd data and logs (default: a temporary directory)")
    up.add_argument("--bin-dir", help="the binaries (default: $KUBESIM_CONTROLPLANE_BIN or make's build cache)")
    up.add_argument("--detach", action="store_true", help="run in the background; stop with `controlplane down`")
    down = cp_sub.add_parser("down", help="stop a control plane started with --detach")
    down.add_argument("--kubeconfig", required=True)


def _serve_controlplane(args) -> int:
    from .controlplane import ControlPlane

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cp = ControlPlane(bin_dir=args.bin_dir, work_dir=args.work_dir, kubeconfig_path=os.path.abspath(args.kubeconfig))
    cp.start()
    with open(_pid_path(cp.kubeconfig_path), "w") as f:
        f.write(str(os.getpid()))
    print(f"kubesim: control plane {cp.url} ready in {cp.times.ready:.1f} s (API server /readyz "
          f"{cp.times.apiserver_ready:.1f} s), kubeconfig {cp.kubeconfig_path}, logs {cp.work_dir}", flush=True)
    try:
        stop.wait()
    finally:
        cp.stop()
        if os.path.exists(_pid_path(cp.kubeconfig_path)):
            os.remove(_pid_path(cp.kubeconfig_path))
        print("kubesim: control plane stopped", flush=True)
    return 0


def _detach(argv: list[str], kubeconfig: str) -> int:
    """Start `up` without --detach in a new session and return once it serves."""
    kubeconfig = os.path.abspath(kubeconfig)
    for stale in (_pid_path(kubeconfig), kubeconfig):
        if os.path.exists(stale):
            os.remove(stale)
    child_argv = [a for a in argv if a != "--detach"]
    with open(_log_path(kubeconfig), "w") as logf:
        child = subprocess.Popen([sys.executable, "-m", "kubesim", *child_argv], stdout=logf,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(open(_log_path(kubeconfig)).read(), file=sys.stderr)
            print(f"kubesim: failed to start (exit {child.returncode})", file=sys.stderr)
            return 1
        if os.path.exists(_pid_path(kubeconfig)):
            print(open(_log_path(kubeconfig)).read().strip())
            print(f"kubesim: running in the background (pid {child.pid}); log {_log_path(kubeconfig)}")
            return 0
        time.sleep(0.1)
    child.terminate()
    print("kubesim: did not start within 120 s", file=sys.stderr)
    return 1


def _down(kubeconfig: str) -> int:
    pid_file = _pid_path(os.path.abspath(kubeconfig))
    if not os.path.exists(pid_file):
        print(f"kubesim: no kubesim runs for {kubeconfig} (no {pid_file})", file=sys.stderr)
        return 1
    pid = int(open(pid_file).read())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        os.remove(pid_file)
        print(f"kubesim: process {pid} was already gone", file=sys.stderr)
        return 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"kubesim: stopped (pid {pid})")
            return 0
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    print(f"kubesim: killed (pid {pid}) after 60 s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m kubesim", description="Kubernetes API simulator")
    sub = parser.add_subparsers(dest="command", required=True)
    _up_parser(sub)
    _controlplane_parser(sub)
    down = sub.add_parser("down", help="stop a kubesim started with --detach")
    down.add_argument("--kubeconfig", required=True)
    sub.add_parser("fault", help="inject or clear faults (see `python -m kubesim fault --help`)",
                   add_help=False)
    if argv and argv[0] == "fault":
        from .faults_cli import main as fault_main
        return fault_main(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "down":
        return _down(args.kubeconfig)
    if args.command == "controlplane":
        if args.cp_command == "down":
            return _down(args.kubeconfig)
        return _detach(argv, args.kubeconfig) if args.detach else _serve_controlplane(args)
    if args.detach:
        return _detach(argv, args.kubeconfig)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
