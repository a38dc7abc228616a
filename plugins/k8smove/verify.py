"""After a move: nothing of the release left on the source nodes, and the Service answering."""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

from kubernetes.client import ApiClient

from k8smove import LABEL_COMPONENT, K8sMoveError, kube, release_selector
from k8smove.labels import matches

log = logging.getLogger(__name__)


def pods_left_on_sources(api: ApiClient, namespace: str, release: str, sources: dict[str, dict],
                         target: dict) -> list[str]:
    """``pod on node`` for each pod of a moved component still on a node its source selects but the target does not."""
    node_labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {}
                   for n in kube.list_objects(api, "v1", "Node")}
    source_nodes = {
        component: {name for name, labels in node_labels.items()
                    if matches(source, labels) and not matches(target, labels)}
        for component, source in sources.items()}
    left = []
    for pod in kube.list_objects(api, "v1", "Pod", namespace, release_selector(release)):
        component = pod["metadata"]["labels"].get(LABEL_COMPONENT)
        node = pod["spec"].get("nodeName")
        if node in source_nodes.get(component, ()):
            left.append(f"{pod['metadata']['name']} on {node}")
    return left


def verify_source_empty(api: ApiClient, namespace: str, release: str, sources: dict[str, dict],
                        target: dict) -> None:
    if left := pods_left_on_sources(api, namespace, release, sources, target):
        raise K8sMoveError(f"pods still on the source node(s): {', '.join(left)}")


def verify_endpoint(url: str, expected_status: int = 200, body_contains: str | None = None,
                    deadline_seconds: float = 60, first_delay: float = 0.2, max_delay: float = 5.0,
                    request_timeout: float = 5.0) -> dict:
    """GET ``url`` until it answers as expected, backing off exponentially within the deadline.

    Returns {"status", "body"} of the answer (its JSON when it is JSON, so the log shows which pod/node
    answered); raises K8sMoveError with the last failure once the deadline has passed.
    """
    deadline = time.monotonic() + deadline_seconds
    delay, attempt = first_delay, 0
    while True:
        attempt += 1
        try:
            with urllib.request.urlopen(url, timeout=request_timeout) as response:
                status, text = response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as err:
            status, text = None, str(err)
        ok = status == expected_status and (body_contains is None or body_contains in text)
        log.info("GET %s attempt %d: %s %s", url, attempt, status, text[:500])
        if ok:
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return {"status": status, "body": body}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            wanted = f"status {expected_status}" + (f" with {body_contains!r} in the body" if body_contains else "")
            raise K8sMoveError(f"GET {url} did not answer with {wanted} within {deadline_seconds}s "
                               f"({attempt} attempts); last answer: {status} {text[:200]}")
        time.sleep(min(delay, remaining))     # backoff between attempts of a bounded retry, not a poll
        delay = min(delay * 2, max_delay)
