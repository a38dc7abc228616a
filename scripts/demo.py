"""`make demo`: kubesim with node1 and node2, then deploy_app and migrate_app through Airflow, then a report.

Everything it starts (kubesim, its processes, Airflow's sqlite home) is stopped or removed at the end;
the JSON report stays in reports/.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from kubesim.addresses import EXTERNAL_RANGE, ensure_local_routes, external_address
from scripts.local_airflow import ROOT, airflow_environ, run_airflow



def free_port(host: str, preferred: int) -> int:
    """``preferred`` or the nearest free port above it on ``host``."""
    for port in range(preferred, preferred + 100):
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    raise SystemExit(f"no free port in {preferred}..{preferred + 99} on {host}")


def run_dag(env: dict, dag_id: str, conf: dict, report_dir: Path) -> dict:
    """``airflow dags test`` with ``conf``; returns the run's state, wall time and task states."""
    print(f"--> airflow dags test {dag_id} --conf '{json.dumps(conf)}'", flush=True)
    started = time.monotonic()
    result = run_airflow(env, "dags", "test", dag_id, "--conf", json.dumps(conf))
    elapsed = round(time.monotonic() - started, 2)
    log_path = report_dir / f"{dag_id}.log"
    log_path.write_text(result.stdout)
    finished = re.findall(rf"DagRun Finished: dag_id={dag_id}, .*? state=(\w+)", result.stdout)
    state = finished[-1] if finished else f"did not finish (exit {result.returncode})"
    print(f"    {dag_id}: {state} in {elapsed} s (log: {log_path})", flush=True)
    return {"state": state, "wall_s": elapsed, "log": str(log_path)}


def newest_report(report_dir: Path, dag_id: str) -> dict:
    reports = sorted(report_dir.glob(f"{dag_id}__*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text()) if reports else {}


def human_summary(report: dict, report_path: Path) -> str:
    m = report["migrate"]
    probe, db = m.get("probe") or {}, m.get("db") or {}
    writes, switch = (probe or {}).get("writes") or {}, m.get("db_switchover") or {}
    lines = [
        "",
        "k8smove demo report",
        "===================",
        f"service      {report['service_url']}",
        f"deploy_app   {report['deploy']['state']}  ({report['deploy']['wall_s']} s)",
        f"migrate_app  {m['state']}  ({m.get('duration_s')} s, outcome: {m.get('outcome')})",
        f"pods before  {json.dumps(m.get('pods_before', {}))}",
        f"pods after   {json.dumps(m.get('pods_after', {}))}",
        f"probe        {probe.get('sent')} requests, {probe.get('failed')} failed, longest gap "
        f"{probe.get('max_gap_ms')} ms, p50 {probe.get('latency_ms', {}).get('p50')} ms",
        f"writes       {writes.get('sent')} sent, {writes.get('failed')} not acknowledged, longest with none "
        f"acknowledged {writes.get('max_stall_ms')} ms, p99 {(writes.get('latency_ms') or {}).get('p99')} ms",
        f"DB move      switchover: writes paused {switch.get('write_pause_ms')} ms (fence to switch)",
        f"database     {db.get('rows_acknowledged')} rows acknowledged, {db.get('rows_present')} present, "
        f"{db.get('rows_lost')} lost",
        f"JSON report  {report_path}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--external-ip", default=external_address(1),
                        help="the Service's external address (an API server refuses loopback ones)")
    parser.add_argument("--port", type=int, default=8080, help="8080, or the nearest free port above it")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "reports")
    parser.add_argument("--control-plane", choices=("kubesim", "real"), default="kubesim",
                        help="kubesim's own API server (default), or the real one built by `make controlplane`")
    args = parser.parse_args(argv)
    report_dir = args.report_dir.resolve()

    from kubesim.cluster import Cluster

    report_dir.mkdir(parents=True, exist_ok=True)
    for old in report_dir.glob("*"):
        old.unlink()
    try:
        ensure_local_routes((EXTERNAL_RANGE,))   # kubesim's Services answer on this machine at these addresses
    except RuntimeError as error:
        raise SystemExit(f"{error}\nor pass --external-ip with a non-loopback address of this machine")
    port = free_port(args.external_ip, args.port)
    work = Path(tempfile.mkdtemp(prefix="k8smove-demo-"))
    try:
        print("--> starting kubesim (nodes node1, node2)", flush=True)
        with Cluster(nodes=["node1", "node2"], work_dir=str(work / "kubesim"),
                     kubeconfig_path=str(work / "kubeconfig"), control_plane=args.control_plane) as cluster:
            print(f"    API server {cluster.url}; kubeconfig {cluster.kubeconfig_path}", flush=True)
            env = airflow_environ(work / "airflow", cluster.kubeconfig_path, report_dir)
            print("--> preparing Airflow (sqlite metadata DB)", flush=True)
            migrated = run_airflow(env, "db", "migrate")
            if migrated.returncode != 0:
                print(migrated.stdout, file=sys.stderr)
                return 1
            deploy_conf = {"label_nodes": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
                           "node_label": {"demo": "node1"}, "external_ip": args.external_ip, "port": port}
            deploy = run_dag(env, "deploy_app", deploy_conf, report_dir)
            migrate = run_dag(env, "migrate_app", {"node_label": {"demo": "node2"}}, report_dir) \
                if deploy["state"] == "success" else {"state": "not run"}
            migration = newest_report(report_dir, "migrate_app")
            print("--> stopping kubesim", flush=True)
        report = {"service_url": f"http://{args.external_ip}:{port}/", "deploy": deploy,
                  "migrate": {**migration, "state": migrate["state"], "wall_s": migrate.get("wall_s")}}
        report_path = report_dir / "demo-report.json"
        report_path.write_text(json.dumps(report, indent=2))
        print(human_summary(report, report_path))
        ok = deploy["state"] == "success" and migrate["state"] == "success"
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
