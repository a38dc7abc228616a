"""Generic object access over a ``kubernetes`` ApiClient (the hook's), by apiVersion/kind.

The typed APIs need one method per kind; apply, rollback and dry-run diff treat every kind alike, so they
go through ``call_api`` with paths from this small table of the kinds our templates use.
"""
from __future__ import annotations

import json
import time

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTClientObject
from urllib3.util.retry import Retry

from k8smove import FIELD_MANAGER, K8sMoveError

# kind -> (plural, namespaced)
KINDS = {
    "ConfigMap": ("configmaps", True),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "PersistentVolume": ("persistentvolumes", False),
    "StorageClass": ("storageclasses", False),
    "Deployment": ("deployments", True),
    "StatefulSet": ("statefulsets", True),
    "Node": ("nodes", False),
    "Pod": ("pods", True),
    "Lease": ("leases", True),
}
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink")


# An API server that restarts (a crash, an upgrade, its etcd restarting) refuses connections for seconds, or drops
# one before its answer. urllib3 retries both, but 3 times at once by default: over in a millisecond.
CONNECT_RETRIES = 8     # refused or reset before the request was sent: safe for every method
READ_RETRIES = 3        # dropped before the answer: only methods safe to send again (IDEMPOTENT_METHODS)
BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.5, 4.0   # pauses 0, 1, 2, 4, 4 … s: about 25 s of refused connections
# urllib3's idempotent methods and PATCH: every PATCH k8smove sends sets values (server-side apply, merge patches),
# so sending it again changes nothing; a POST (create) is not repeated (its step's retry is)
IDEMPOTENT_METHODS = Retry.DEFAULT_ALLOWED_METHODS | {"PATCH"}


def connection_retry() -> Retry:
    """The retry policy of every k8smove API call: connection errors and lost answers with backoff, within
    CONNECT_RETRIES/READ_RETRIES; a 429/503 with Retry-After up to 3 times, as urllib3 does by default. Error
    statuses (5xx) are not retried here: the step's task retry does that, with the move record on the lock."""
    return Retry(total=CONNECT_RETRIES + READ_RETRIES, connect=CONNECT_RETRIES, read=READ_RETRIES, status=3,
                 redirect=3, backoff_factor=BACKOFF_SECONDS, backoff_max=MAX_BACKOFF_SECONDS,
                 allowed_methods=IDEMPOTENT_METHODS)


def retry_connection_errors(api: ApiClient) -> ApiClient:
    """``api`` (the hook's client) with connection_retry() on each request; returns it."""
    api.configuration.retries = connection_retry()
    api.rest_client.pool_manager.clear()
    api.rest_client = RESTClientObject(api.configuration)   # the pool takes its retries when it is made
    return api


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural, namespaced = KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:   # no namespace: list across all of them
        base += f"/namespaces/{namespace}"
    return f"{base}/{plural}" + (f"/{name}" if name else "")


def ref(manifest: dict) -> str:
    """``Deployment default/demo-app``: how logs and messages name an object."""
    meta = manifest["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{manifest['kind']} {where}{meta['name']}"


def call(api: ApiClient, method: str, path: str, body=None, query=None, content_type="application/json"):
    response = api.call_api(
        path, method, query_params=query or [], body=body,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False,
    )
    return json.loads(response.data) if response.data else None


def status_message(err: ApiException) -> str:
    """An API error in words: the Status's reason and message (which names the fields), else the HTTP reason."""
    try:
        status = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    return f"{status.get('reason') or err.reason}: {status.get('message') or err.body or err.status}"


def get(api: ApiClient, manifest: dict) -> dict | None:
    meta = manifest["metadata"]
    try:
        return call(api, "GET", object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"),
                                             meta["name"]))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def server_side_apply(api: ApiClient, manifest: dict, dry_run: bool = False,
                      field_manager: str = FIELD_MANAGER) -> dict:
    """PATCH application/apply-patch+yaml as ``field_manager``; we own our fields, so conflicts are forced."""
    meta = manifest["metadata"]
    query = [("fieldManager", field_manager), ("force", "true")]
    if dry_run:
        query.append(("dryRun", "All"))
    path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
    return call(api, "PATCH", path, body=manifest, query=query, content_type="application/apply-patch+yaml")


def delete(api: ApiClient, manifest: dict, preconditions: dict | None = None) -> None:
    meta = manifest["metadata"]
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions} if preconditions else None
    try:
        call(api, "DELETE", object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"),
                                        meta["name"]), body=body)
    except ApiException as err:
        if err.status != 404:
            raise


def list_objects(api: ApiClient, api_version: str, kind: str, namespace: str | None = None,
                 label_selector: str | None = None) -> list[dict]:
    query = [("labelSelector", label_selector)] if label_selector else []
    return call(api, "GET", object_path(api_version, kind, namespace), query=query)["items"]


def strip_server_fields(obj: dict) -> dict:
    """The object as a client would write it: no status, no server-maintained metadata."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in SERVER_FIELDS}
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": meta}


def wait_for(condition, seconds: float, what: str, poll_seconds: float = 0.05, max_poll_seconds: float | None = None):
    """Poll ``condition()`` until it returns something other than None, and return that; after ``seconds``
    raise K8sMoveError "<what> within <seconds> s". ``max_poll_seconds``: the pause grows by half each poll up to
    it (a wait many releases do at once must not flood the API server); by default it stays ``poll_seconds``."""
    deadline, pause = time.monotonic() + seconds, poll_seconds
    while time.monotonic() < deadline:
        if (found := condition()) is not None:
            return found
        time.sleep(pause)
        pause = min(pause * 1.5, max(max_poll_seconds or poll_seconds, poll_seconds))
    raise K8sMoveError(f"{what} within {seconds:g} s")


class ExecFailed(Exception):
    """A command run in a container (exec) exited non-zero or could not run; ``str()`` has its stderr."""


def exec_in_container(api: ApiClient, namespace: str, pod: str, container: str, command: list[str],
                      stdin: str = "", timeout_seconds: float = 60) -> str:
    """Run ``command`` in the container through the API server (pods/exec, as kubectl exec does) with ``stdin``
    written first; returns stdout. Raises ExecFailed with the exit code and stderr."""
    from kubernetes.client import CoreV1Api
    from kubernetes.stream import stream

    # stream() swaps its client's request method while it runs: a client of its own keeps other threads' calls off it
    client = ApiClient(configuration=api.configuration)
    try:
        resp = stream(CoreV1Api(client).connect_get_namespaced_pod_exec, pod, namespace, container=container,
                      command=command, stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
        try:
            if stdin:
                resp.write_stdin(stdin)
            resp.close_channel(0)    # stdin's end (v5.channel.k8s.io; on v4 the command reads one line)
            out, err = [], []
            deadline = time.monotonic() + timeout_seconds
            while resp.is_open():
                if time.monotonic() > deadline:
                    raise ExecFailed(f"{command[0]} in {namespace}/{pod}: no answer within {timeout_seconds:g} s")
                resp.update(timeout=1)
                out.append(resp.read_channel(1))
                err.append(resp.read_channel(2))
            out.append(resp.read_channel(1))
            err.append(resp.read_channel(2))
            try:
                code = resp.returncode
            except (KeyError, IndexError, TypeError, ValueError):   # a Failure Status without an exit code
                code = "without an exit code"
        finally:
            resp.close()
    except ApiException as error:
        raise ExecFailed(f"exec in {namespace}/{pod}: {status_message(error)}") from error
    finally:
        client.close()
    if code != 0:
        raise ExecFailed(f"exec in {namespace}/{pod} exited {code}: {''.join(err).strip()}")
    return "".join(out)
