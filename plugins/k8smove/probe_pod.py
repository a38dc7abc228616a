"""The availability probe as a Pod in the cluster, so no task depends on another task's machine.

start_probe (one worker) creates the Pod and returns a handle of names only; stop_probe (any worker) stops it by
exec, waits for it to end and reads its figures from its log; both go through the API server. The Pod runs
``k8smove/availability.py`` (standard library only) with ``python3 -c`` in a plain Python image, measures from
inside the cluster through the Service's external address (where users connect), and ends by itself after
``max_seconds``. A probe that a crashed run left behind is removed by the next start_probe of its release.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.rest import ApiException

from k8smove import LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, K8sMoveError, kube

PROBE_IMAGE_ENV = "K8SMOVE_PROBE_IMAGE"
DEFAULT_PROBE_IMAGE = "python:3.13-alpine"
CONTAINER = "probe"
LABEL_PROBE_OF = "k8smove.io/probe-of"
LABEL_PROBE_RUN = "k8smove.io/probe-run"
ANNOTATION_DAG_ID = "k8smove.io/dag-id"
ANNOTATION_RUN_ID = "k8smove.io/run-id"
START_WAIT_SECONDS = 120     # an image pull on a real node
STOP_WAIT_SECONDS = 30
STOP_RESEND_SECONDS = 5      # a stop the probe did not end after is sent again (SIGTERM twice is still one stop)
POLL_SECONDS = 0.1
FINISHED = ("Succeeded", "Failed")
SOURCE = Path(__file__).with_name("availability.py")
STOP_COMMAND = ["python3", "-c", "import os, signal; os.kill(1, signal.SIGTERM)"]


def probe_pod_name(release: str, dag_id: str, run_id: str) -> str:
    """``<release>-k8smove-probe-<8 hex of the run>``: at most 63 characters for a 40-character release."""
    return f"{release}-k8smove-probe-{hashlib.sha256(f'{dag_id}/{run_id}'.encode()).hexdigest()[:8]}"


def probe_pod(namespace: str, release: str, dag_id: str, run_id: str, url: str, rate: float, write_rate: float,
              max_seconds: float, image: str, avoid_nodes=()) -> dict:
    """The probe's Pod; it prefers nodes other than ``avoid_nodes`` (the move's target nodes: a target that
    cannot start pods must not keep the probe from starting), and goes there if nothing else has room."""
    name = probe_pod_name(release, dag_id, run_id)
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": {
        "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": list(avoid_nodes)}]}}]}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace,
            # not the release's instance label: the probe must be neither one of its pods nor behind its Services
            "labels": {LABEL_NAME: "k8smove-probe", LABEL_MANAGED_BY: MANAGED_BY, LABEL_PROBE_OF: release,
                       LABEL_PROBE_RUN: name.rsplit("-", 1)[1]},
            "annotations": {ANNOTATION_DAG_ID: dag_id, ANNOTATION_RUN_ID: run_id},
        },
        "spec": {
            "restartPolicy": "Never",
            # a backstop only: the probe ends itself after max_seconds
            "activeDeadlineSeconds": int(max_seconds) + 120,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            **({"affinity": affinity} if avoid_nodes else {}),
            "containers": [{
                "name": CONTAINER, "image": image,
                "command": ["python3", "-c", SOURCE.read_text(), "--url", url, "--rate", f"{rate:g}",
                            "--write-rate", f"{write_rate:g}", "--max-seconds", f"{max_seconds:g}"],
                "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            }],
        },
    }


def _pod_path(namespace: str, name: str | None = None) -> str:
    return kube.object_path("v1", "Pod", namespace, name)


def _pod_ref(namespace: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": namespace, "name": name}}


def _log(api: ApiClient, namespace: str, name: str, **query) -> str:
    # raw: the client would otherwise parse a log that looks like JSON and hand back its Python repr
    return CoreV1Api(api).read_namespaced_pod_log(name, namespace, container=CONTAINER, _preload_content=False,
                                                  **query).data.decode("utf-8", "replace")


def _log_lines(api: ApiClient, namespace: str, name: str) -> list[dict]:
    """The probe's JSON lines (``{"k8smove_probe": ...}``) from its container log."""
    text = _log(api, namespace, name)
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "k8smove_probe" in value:
            lines.append(value)
    return lines


def _phase(pod: dict | None) -> str | None:
    return ((pod or {}).get("status") or {}).get("phase")


def _not_running_reason(pod: dict) -> str | None:
    """Why the probe's container is not running, as the kubelet says it (image pull, config error), else None."""
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
    return None


def remove_leftovers(api: ApiClient, namespace: str, release: str, keep: str, run_over) -> list[str]:
    """Delete the release's probe Pods of other runs once ``run_over(dag_id, run_id)`` says their run has ended
    (a crashed run's, running or not); a live run's probe is left alone, even ended: its stop_probe may still
    read it. Returns the names deleted."""
    removed = []
    for pod in kube.list_objects(api, "v1", "Pod", namespace, f"{LABEL_PROBE_OF}={release}"):
        meta = pod["metadata"]
        if meta["name"] == keep or meta.get("deletionTimestamp"):
            continue
        notes = meta.get("annotations") or {}
        if run_over(notes.get(ANNOTATION_DAG_ID), notes.get(ANNOTATION_RUN_ID)):
            kube.delete(api, _pod_ref(namespace, meta["name"]))   # list items carry no kind
            removed.append(meta["name"])
    return removed


def start(api: ApiClient, namespace: str, release: str, dag_id: str, run_id: str, url: str, rate: float,
          write_rate: float, max_seconds: float, run_over=lambda dag_id, run_id: False, avoid_nodes=()) -> dict:
    """Create the run's probe Pod for the release (a retry reuses a running one) and wait until it probes;
    returns the handle stop() needs: names only, valid on any machine."""
    manifest = probe_pod(namespace, release, dag_id, run_id, url, rate, write_rate, max_seconds,
                         os.environ.get(PROBE_IMAGE_ENV) or DEFAULT_PROBE_IMAGE, avoid_nodes)
    name = manifest["metadata"]["name"]
    handle = {"namespace": namespace, "pod": name, "url": url, "rate": rate, "write_rate": write_rate,
              "image": manifest["spec"]["containers"][0]["image"],
              "removed_leftovers": remove_leftovers(api, namespace, release, name, run_over)}
    existing = kube.get(api, manifest)
    if existing and _phase(existing) in FINISHED:
        kube.delete(api, existing)   # an earlier attempt's probe that already ended: this attempt measures anew
        kube.wait_for(lambda: True if kube.get(api, manifest) is None else None, STOP_WAIT_SECONDS,
                      f"the ended probe Pod {namespace}/{name} was not deleted")
        existing = None
    if existing is None:
        try:
            kube.call(api, "POST", _pod_path(namespace), body=manifest)
        except ApiException as err:
            raise K8sMoveError(f"the probe Pod {namespace}/{name} cannot be created: {kube.status_message(err)}") \
                from err

    def probing():
        pod = kube.get(api, manifest)
        if pod is None:
            raise K8sMoveError(f"the probe Pod {namespace}/{name} was deleted while it started")
        if (reason := _not_running_reason(pod)) or _phase(pod) in FINISHED:
            raise K8sMoveError(f"the probe Pod {namespace}/{name} did not start: "
                               f"{reason or _phase(pod)} ({_tail(api, namespace, name)})")
        if _phase(pod) != "Running":
            return None
        return True if any(line["k8smove_probe"] == "started" for line in _log_lines(api, namespace, name)) else None

    kube.wait_for(probing, START_WAIT_SECONDS, f"the probe Pod {namespace}/{name} was not probing", POLL_SECONDS)
    handle["started_at"] = time.time()
    return handle


def _tail(api: ApiClient, namespace: str, name: str) -> str:
    try:
        return _log(api, namespace, name, tail_lines=5).strip() or "no output"
    except ApiException as err:
        return f"no log: {kube.status_message(err)}"


def stop(api: ApiClient, handle: dict) -> dict:
    """Stop the probe (if it has not ended by itself) and return its summary from its log. The Pod stays until
    forget(): a retried stop_probe must find the figures again."""
    namespace, name = handle["namespace"], handle["pod"]
    path = _pod_ref(namespace, name)
    pod = kube.get(api, path)
    if pod is None:
        raise K8sMoveError(f"the probe Pod {namespace}/{name} is gone: its figures are lost")
    def ended():
        current = kube.get(api, path)
        return current if _phase(current) in FINISHED else None

    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while _phase(pod) not in FINISHED:
        exec_error = ""
        try:
            kube.exec_in_container(api, namespace, name, CONTAINER, STOP_COMMAND,
                                   timeout_seconds=max(1.0, deadline - time.monotonic()))
        except Exception as error:   # the session dies with the container it stopped, or it had ended already
            exec_error = f" (the stop exec: {type(error).__name__}: {error})"
        try:
            pod = kube.wait_for(ended, min(STOP_RESEND_SECONDS, max(0.0, deadline - time.monotonic())), "ended")
        except K8sMoveError:
            # not ended: the exec may not have reached the container (its node's kubelet restarting), send it again
            if time.monotonic() >= deadline:
                raise K8sMoveError(f"the probe Pod {namespace}/{name} did not end after its stop{exec_error} "
                                   f"within {STOP_WAIT_SECONDS:g} s") from None
    summaries = [line for line in _log_lines(api, namespace, name) if line["k8smove_probe"] == "summary"]
    if not summaries:
        raise K8sMoveError(f"the probe Pod {namespace}/{name} ended without its figures "
                           f"({_tail(api, namespace, name)})")
    return summaries[-1]["summary"]


def forget(api: ApiClient, handle: dict) -> None:
    """Delete the probe Pod once its summary is safely recorded."""
    kube.delete(api, _pod_ref(handle["namespace"], handle["pod"]))
