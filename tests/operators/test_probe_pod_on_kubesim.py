"""The availability probe as a Pod (issue 12): started, stopped and read through the API server only, so the tasks
that start and stop it may run on different machines; a crashed run's probe is removed by the next run."""
from __future__ import annotations

import time

import pytest
from kubernetes.client import CoreV1Api

from k8smove import K8sMoveError, probe_pod
from k8smove.availability import rows_present
from kubesim_release import deployed
from waiting import wait_for


def service_url(values: dict) -> str:
    return f"http://{values['external_ip']}:{values['port']}"


def probe_pods(kube_client) -> dict[str, str]:
    """name -> phase of every probe Pod of the release."""
    return {p.metadata.name: p.status.phase for p in CoreV1Api(kube_client).list_namespaced_pod(
        "default", label_selector=f"{probe_pod.LABEL_PROBE_OF}=demo").items}


def test_a_probe_pod_measures_the_release_and_its_figures_come_back_through_the_api(cluster, kube_client):
    values = deployed(cluster, kube_client)
    url = service_url(values)
    handle = probe_pod.start(kube_client, "default", "demo", "migrate_app", "run-1", url, 20, 5, 300,
                             avoid_nodes=["node2"])
    assert set(handle) >= {"namespace", "pod", "url"} and "pid" not in handle and "out" not in handle
    pod = CoreV1Api(kube_client).read_namespaced_pod(handle["pod"], "default")
    assert pod.status.phase == "Running" and pod.spec.containers[0].image == probe_pod.DEFAULT_PROBE_IMAGE
    # the node it was told to avoid is the emptier one (the release's pods are on node1): the preference decides
    assert pod.spec.node_name == "node1"
    # the probe is not one of the release's pods: no Service of the release may send it traffic
    assert "app.kubernetes.io/instance" not in pod.metadata.labels
    assert pod.spec.automount_service_account_token is False
    # a retried start_probe finds the same running probe
    assert probe_pod.start(kube_client, "default", "demo", "migrate_app", "run-1", url, 20, 5, 300)["pod"] \
        == handle["pod"]
    time.sleep(2)

    summary = probe_pod.stop(kube_client, handle)
    assert summary["stopped_by"] == "signal"
    assert summary["sent"] >= 20 and summary["failed"] == 0, summary
    assert {p["node"] for p in summary["placements"]} == {"node1"}
    acknowledged = summary["writes"]["acknowledged"]
    assert len(acknowledged) >= 5 and set(acknowledged) <= set(rows_present(url))
    # a retried stop_probe reads the same figures; forget removes the Pod
    assert probe_pod.stop(kube_client, handle) == summary
    probe_pod.forget(kube_client, handle)
    wait_for(lambda: not probe_pods(kube_client), 30, "the probe Pod deleted")


def test_a_probe_ends_by_itself_and_a_crashed_runs_probe_is_removed_by_the_next_run(cluster, kube_client):
    values = deployed(cluster, kube_client)
    url = service_url(values)
    ended = probe_pod.start(kube_client, "default", "demo", "migrate_app", "crashed-1", url, 10, 0, 1)
    time.sleep(2)
    summary = probe_pod.stop(kube_client, ended)   # after its max_seconds of 1 s it stopped by itself
    assert summary["stopped_by"] == "max-seconds" and summary["sent"] >= 5, summary
    assert probe_pods(kube_client)[ended["pod"]] == "Succeeded"
    running = probe_pod.start(kube_client, "default", "demo", "node_maintenance", "crashed-2", url, 10, 0, 300)
    live = probe_pod.start(kube_client, "default", "demo", "migrate_app", "live", url, 10, 0, 300)
    assert probe_pods(kube_client) == {ended["pod"]: "Succeeded", running["pod"]: "Running", live["pod"]: "Running"}

    asked = []

    def run_over(dag_id, run_id):
        asked.append((dag_id, run_id))
        return run_id.startswith("crashed")    # those runs ended without stopping their probe; "live" runs on

    handle = probe_pod.start(kube_client, "default", "demo", "migrate_app", "next", url, 10, 0, 300, run_over)
    assert sorted(handle["removed_leftovers"]) == sorted([ended["pod"], running["pod"]])
    assert sorted(asked) == [("migrate_app", "crashed-1"), ("migrate_app", "live"), ("node_maintenance", "crashed-2")]
    wait_for(lambda: set(probe_pods(kube_client)) == {live["pod"], handle["pod"]}, 30, "only the live runs' probes")
    for h in (live, handle):
        assert probe_pod.stop(kube_client, h)["stopped_by"] == "signal"
        probe_pod.forget(kube_client, h)


def test_a_probe_pod_deleted_under_a_run_is_reported_not_waited_for(cluster, kube_client):
    values = deployed(cluster, kube_client)
    handle = probe_pod.start(kube_client, "default", "demo", "migrate_app", "deleted", service_url(values), 10, 0, 300)
    CoreV1Api(kube_client).delete_namespaced_pod(handle["pod"], "default", grace_period_seconds=0)
    wait_for(lambda: not probe_pods(kube_client), 30, "the probe Pod deleted")
    with pytest.raises(K8sMoveError, match=f"the probe Pod default/{handle['pod']} is gone: its figures are lost"):
        probe_pod.stop(kube_client, handle)
