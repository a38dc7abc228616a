"""The move engine's lock and its safety net, against kubesim through the real kubernetes client."""
from __future__ import annotations

import threading
import time
import pytest
from kubernetes.client import AppsV1Api, CoreV1Api

from k8smove import K8sMoveError, lock
from k8smove.engine import begin, commit, plan_release, roll_back
from k8smove.rollout import workloads_in
from kubesim_release import deployed, pods_by_component, wait


def recorded_values(kube_client) -> str:
    return CoreV1Api(kube_client).read_namespaced_config_map("demo-k8smove", "default").data["values.json"]


def test_the_lock_is_one_holders_at_a_time_and_named_in_the_refusal(cluster, kube_client):
    lease, orphan = lock.acquire(kube_client, "default", "demo", "migrate_app/run-a", 600)
    assert orphan == {} and lease["spec"]["holderIdentity"] == "migrate_app/run-a"
    again, _ = lock.acquire(kube_client, "default", "demo", "migrate_app/run-a", 600)   # a retry of the same run
    assert again["metadata"]["uid"] == lease["metadata"]["uid"]
    with pytest.raises(lock.LockHeld, match=r"release default/demo is being moved by migrate_app/run-a \(Lease "
                                            r"default/demo-k8smove-lock, held until .* UTC\)"):
        lock.acquire(kube_client, "default", "demo", "node_maintenance/run-b", 600)
    assert lock.release_lock(kube_client, "default", "demo", "node_maintenance/run-b") is False   # not its lock
    assert lock.release_lock(kube_client, "default", "demo", "migrate_app/run-a") is True
    assert lock.current(kube_client, "default", "demo") is None


def test_racing_runs_never_both_hold_the_lock(cluster, kube_client):
    winners, refused = [], []
    start = threading.Barrier(8)

    def contend(holder):
        start.wait()
        try:
            lock.acquire(kube_client, "default", "demo", holder, 600)
            winners.append(holder)
        except lock.LockHeld as err:
            refused.append(str(err))
    threads = [threading.Thread(target=contend, args=(f"migrate_app/run-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 7, (winners, refused)
    assert all(f"is being moved by {winners[0]}" in message for message in refused)


def test_an_expired_lock_is_taken_over_and_the_unfinished_move_undone_first(cluster, kube_client, monkeypatch):
    deployed(cluster, kube_client)
    plan = plan_release(kube_client, "default", "demo", {"demo": "node2"})
    monkeypatch.setattr(lock, "LEASE_MARGIN_SECONDS", 0)
    begin(kube_client, plan, "migrate_app/crashed", 1)      # its worker dies here: the move is half done
    with pytest.raises(lock.LockHeld, match="being moved by migrate_app/crashed"):
        begin(kube_client, plan, "migrate_app/next", 60)
    time.sleep(1.5)                                          # its lease expires (margin 0, timeout 1 s)
    started = begin(kube_client, plan, "migrate_app/next", 60)
    assert {r["object"]: r["result"] for r in started["recovered"]}["Deployment default/demo-app"] == "restored"
    record = lock.record_of(lock.current(kube_client, "default", "demo"))
    prior_app = next(e for e in record["prior_state"] if e["kind"] == "Deployment" and e["metadata"]["name"] == "demo-app")
    assert record["holder"] == "migrate_app/next"
    assert prior_app["object"]["spec"]["template"]["spec"]["nodeSelector"] == {"demo": "node1"}   # undone first
    assert wait(cluster.kubeconfig_path, "default", "demo", workloads_in(plan["manifests"]), 60)["status"] == "success"
    commit(kube_client, plan, "migrate_app/next")
    assert pods_by_component(kube_client) == {"app": ["node2"], "db": ["node2"]}
    assert lock.current(kube_client, "default", "demo") is None


def test_begin_is_safe_to_run_again_and_rollback_restores_the_first_prior_state(cluster, kube_client):
    deployed(cluster, kube_client)
    before = recorded_values(kube_client)
    plan = plan_release(kube_client, "default", "demo", {"demo": "node2"})
    cluster.faults.add("slow-startup", node="node2", seconds=120)
    first = begin(kube_client, plan, "migrate_app/run-1", 60)
    assert {r["object"]: r["result"] for r in first["applied"]}["Deployment default/demo-app"] == "configured"
    second = begin(kube_client, plan, "migrate_app/run-1", 60)   # the task retried: same holder, same record
    assert {r["result"] for r in second["applied"]} <= {"unchanged", "unchanged (create-only)"}
    record = lock.record_of(lock.current(kube_client, "default", "demo"))
    assert record["phase"] == "applied"
    prior_app = next(e for e in record["prior_state"] if e["metadata"]["name"] == "demo-app" and e["kind"] == "Deployment")
    assert prior_app["object"]["spec"]["template"]["spec"]["nodeSelector"] == {"demo": "node1"}
    assert recorded_values(kube_client) == before        # the recorded values change only at commit
    undone = roll_back(kube_client, "default", "demo", "migrate_app/run-1")
    assert {r["object"]: r["result"] for r in undone["restored"]}["Deployment default/demo-app"] == "restored"
    assert wait(cluster.kubeconfig_path, "default", "demo", undone["workloads"], 60)["status"] == "success"
    assert pods_by_component(kube_client) == {"app": ["node1"], "db": ["node1"]}


def test_a_release_that_moved_since_the_plan_is_refused(cluster, kube_client):
    deployed(cluster, kube_client)
    stale = plan_release(kube_client, "default", "demo", {"demo": "node2"})
    AppsV1Api(kube_client).patch_namespaced_deployment("demo-app", "default", {
        "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "node1"}}}}})
    with pytest.raises(K8sMoveError, match="release default/demo changed since it was planned"):
        begin(kube_client, stale, "migrate_app/run-1", 60)
    assert lock.record_of(lock.current(kube_client, "default", "demo")).get("prior_state") is None


def test_a_redeploy_without_node_label_keeps_the_release_where_it_runs_and_a_new_release_needs_one(
        cluster, kube_client):
    from kubesim_release import deploy_values

    settings = {k: v for k, v in deploy_values().items() if k not in ("namespace", "release", "node_label")}
    with pytest.raises(K8sMoveError, match=r'^node_label: required for a new release \(default/fresh does not exist'):
        plan_release(kube_client, "default", "fresh", None, settings=settings)
    assert cluster.writes(dry_runs=False) == []          # refused before any write

    values = deployed(cluster, kube_client)
    # a re-deploy of another App image, as the trigger form sends it: node_label left empty
    redeploy = {k: v for k, v in values.items() if k not in ("namespace", "release", "node_label")}
    redeploy["images"] = {**redeploy["images"], "app": "kubesim-demo-app:1.1"}
    plan = plan_release(kube_client, "default", "demo", None, settings=redeploy)
    assert plan["target"] == {"demo": "node1"} and plan["existing"] and plan["db_strategy"] is None
    app = next(m for m in plan["manifests"] if m["kind"] == "Deployment" and m["metadata"]["name"] == "demo-app")
    assert app["spec"]["template"]["spec"]["nodeSelector"] == {"demo": "node1"}
    assert app["spec"]["template"]["spec"]["containers"][0]["image"] == "kubesim-demo-app:1.1"
