"""`make ui`: kubesim (node1 labelled demo=node1, node2 labelled demo=node2) and a full local Airflow (api-server,
scheduler, dag-processor, triggerer; scripts/airflow_stack.py) with this package; prints the URL and the login,
runs until Ctrl-C (or SIGTERM), then stops everything it started and removes its scratch directory.

The UI listens on 127.0.0.1:28080 (or the nearest free port above it), never 8080: that is the demo Service's port.
The login is the simple auth manager's user ``admin`` with the password it generates at start.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from kubesim.addresses import EXTERNAL_RANGE, ensure_local_routes
from scripts.airflow_stack import start_stack
from scripts.demo import free_port

DAG_IDS = ("deploy_app", "migrate_app", "node_maintenance", "end_maintenance")
USER = "admin"


def write_cli_env(path: Path, env: dict[str, str]) -> Path:
    """A shell file that points `airflow` (this venv's) at this stack: its AIRFLOW_HOME, metadata DB, DAGs and
    connection, i.e. the variables the stack sets beyond this process's environment."""
    lines = [f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\""]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())
              if os.environ.get(name) != value and name != "PATH"]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)   # it holds the stack's JWT secret
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=28080, help="28080, or the nearest free port above it")
    parser.add_argument("--control-plane", choices=("kubesim", "real"), default="kubesim",
                        help="kubesim's own API server (default), or the real one built by `make controlplane`")
    args = parser.parse_args(argv)

    from kubernetes import config
    from kubernetes.client import CoreV1Api

    from kubesim.cluster import Cluster

    try:
        ensure_local_routes((EXTERNAL_RANGE,))   # kubesim's Services answer on this machine at these addresses
    except RuntimeError as error:
        raise SystemExit(str(error))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    port = free_port("127.0.0.1", args.port)
    work = Path(tempfile.mkdtemp(prefix="k8smove-ui-"))
    try:
        print("--> starting kubesim (nodes node1, node2)", flush=True)
        with Cluster(nodes=["node1", "node2"], work_dir=str(work / "kubesim"),
                     kubeconfig_path=str(work / "kubeconfig"), control_plane=args.control_plane) as cluster:
            client = config.new_client_from_config(config_file=cluster.kubeconfig_path)
            for node in ("node1", "node2"):
                CoreV1Api(client).patch_node(node, {"metadata": {"labels": {"demo": node}}})
            client.close()
            print("--> starting Airflow: api-server, scheduler, dag-processor, triggerer", flush=True)
            home = work / "airflow"
            home.mkdir()
            stack = start_stack(home, cluster.kubeconfig_path, dag_ids=DAG_IDS, all_admins=False, port=port,
                                extra={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin"})
            try:
                user, password = stack.login()
                cli_env = write_cli_env(work / "airflow.env", stack.env)
                print(f"\nAirflow UI   http://127.0.0.1:{stack.port}/\n"
                      f"Login        {user} / {password}\n"
                      f"kubectl      kubectl --kubeconfig {cluster.kubeconfig_path} get nodes,pods -o wide\n"
                      f"CLI          . {cli_env} && airflow dags list\n"
                      f"Try          deploy_app with {{\"node_label\": {{\"demo\": \"node1\"}}}}, then migrate_app "
                      f"with {{\"node_label\": {{\"demo\": \"node2\"}}}}\n"
                      "             (paste JSON into the form's editors: typed in, it comes out mangled)\n"
                      "Ctrl-C stops everything.\n", flush=True)
                while not stop.wait(2):
                    stack.check_alive()
                print("--> stopping Airflow and kubesim", flush=True)
            finally:
                stack.stop()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
