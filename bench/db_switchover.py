"""How long writes stall while the DB moves (issue 11): the switchover against the stop-and-start move, in one sitting.

One kubesim cluster per volume attach latency (0 s: kubesim's default; 15 s: a CSI volume re-attaching on a real
cluster, ``volume_attach_seconds``). On each, the demo release (real PostgreSQL) moves node1 -> node2 -> node1 ...
through the move engine, the two strategies alternating move by move, while a writer POSTs rows at 20/s (and reads
at 5/s) through the Service's external address. Per move: the longest time no write was acknowledged, write latency
p99, writes not acknowledged, rows lost, and the move's own time (begin -> committed).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time

from .common import Result, percentile
from .dag_package import wait_ready

ATTACH_SECONDS = (0.0, 15.0)
ROUNDS = 3                       # moves per strategy per attach latency
WRITE_RATE, READ_RATE = 20.0, 5.0
HOLDER = "bench/db_switchover"


def wait_rollout(kubeconfig: str, workloads: list[dict], timeout: float) -> str:
    """The status of k8smove's rollout wait (the trigger's) for release default/demo."""
    return wait_ready(kubeconfig, workloads, timeout)[0]["status"]


def _move(cluster, api, target: dict, strategy: str, url: str) -> dict:
    from k8smove import availability
    from k8smove.engine import begin, commit, plan_release
    from k8smove.report import data_check
    from k8smove.rollout import workloads_in
    from k8smove.switchover import remove_retired_claims

    plan = plan_release(api, "default", "demo", target, db_strategy=strategy)
    stop, record = threading.Event(), availability.ProbeRecord()
    writer = threading.Thread(target=availability.run, args=(url, READ_RATE, WRITE_RATE, stop, record))
    writer.start()
    time.sleep(2.0)                                     # writes flowing before the move starts
    started = time.monotonic()
    begin(api, plan, HOLDER, 180)
    status = wait_rollout(cluster.kubeconfig_path, workloads_in(plan["manifests"]), 180)
    if status != "success":
        raise RuntimeError(f"{strategy} move to {target}: rollout {status}")
    done = commit(api, plan, HOLDER)
    took = time.monotonic() - started
    time.sleep(2.0)
    stop.set()
    writer.join()
    summary = record.summary(time.monotonic())
    rows = data_check(summary["writes"]["acknowledged"], availability.rows_present(url))
    remove_retired_claims(api, "default", "demo")
    return {"strategy": strategy, "stall_ms": summary["writes"]["max_stall_ms"],
            "p99_ms": summary["writes"]["latency_ms"]["p99"], "write_failures": summary["writes"]["failed"],
            "read_failures": summary["failed"], "rows_lost": rows["rows_lost"], "rows": rows["rows_acknowledged"],
            "move_s": round(took, 2), "switchover": done["db_switchover"]}


def run() -> Result:
    from kubernetes import config

    from kubesim.addresses import external_address
    from kubesim.cluster import Cluster
    from k8smove.nodes import label_nodes
    from k8smove.params import DEPLOY_PARAMS
    from k8smove.engine import begin, commit, plan_release
    from k8smove.rollout import workloads_in

    result = Result("DB move: write stall, switchover vs stop-and-start (recreate)",
                    ".venv/bin/python -m bench db_switchover")
    moves: dict[float, list[dict]] = {}
    for attach in ATTACH_SECONDS:
        with tempfile.TemporaryDirectory(prefix="bench-switchover-") as work, \
                Cluster(nodes=["node1", "node2"], pod_startup_seconds=0.5, max_grace_seconds=10.0,
                        volume_attach_seconds=attach, work_dir=os.path.join(work, "kubesim"),
                        kubeconfig_path=os.path.join(work, "kubeconfig")) as cluster:
            api = config.new_client_from_config(config_file=cluster.kubeconfig_path)
            label_nodes(api, {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}})
            ip = external_address(4000 * 256 + os.getpid() % 200 + 1 + int(attach))
            settings = {key: DEPLOY_PARAMS[key]["default"] for key in ("port", "images", "replicas", "storage")}
            plan = plan_release(api, "default", "demo", {"demo": "node1"}, settings={**settings, "external_ip": ip})
            begin(api, plan, "bench/deploy", 180)
            assert wait_rollout(cluster.kubeconfig_path, workloads_in(plan["manifests"]), 180) == "success"
            commit(api, plan, "bench/deploy")
            url = f"http://{ip}:{settings['port']}"
            moves[attach], node = [], "node1"
            for i in range(ROUNDS * 2):
                node = "node2" if node == "node1" else "node1"
                moves[attach].append(_move(cluster, api, {"demo": node}, ("switchover", "recreate")[i % 2], url))
                print(f"attach {attach:g} s: {moves[attach][-1]}", flush=True)
            api.close()
    for attach, seen in moves.items():
        for strategy in ("switchover", "recreate"):
            runs = [m for m in seen if m["strategy"] == strategy]
            stalls, p99s = [m["stall_ms"] for m in runs], [m["p99_ms"] for m in runs]
            result.add(f"{strategy}, attach {attach:g} s: longest write stall (median / max)",
                       f"{percentile(stalls, 0.5):.0f} / {max(stalls):.0f} ms",
                       *(("≤ 500 ms", max(stalls) <= 500) if strategy == "switchover" else ()))
            result.add(f"{strategy}, attach {attach:g} s: write latency p99 (median / max)",
                       f"{percentile(p99s, 0.5):.0f} / {max(p99s):.0f} ms")
            result.add(f"{strategy}, attach {attach:g} s: writes not acknowledged, rows lost, move time (median)",
                       f"{sum(m['write_failures'] for m in runs)}, {sum(m['rows_lost'] for m in runs)}, "
                       f"{percentile([m['move_s'] for m in runs], 0.5):.1f} s")
    result.raw = moves
    result.notes.append(f"{ROUNDS} moves per strategy and attach latency, alternating; writes {WRITE_RATE:g}/s, reads "
                        f"{READ_RATE:g}/s through the Service's external address; the demo App retries a lost DB "
                        f"every 0.2 s for up to 20 s; target: switchover stall <= 500 ms at any attach latency")
    return result
