"""Set and remove node labels (kubectl label nodes NAME key=value key-)."""
from __future__ import annotations

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from k8smove import K8sMoveError
from k8smove.labels import split_label_changes


def label_nodes(api: ApiClient, label_nodes: dict[str, dict], dry_run: bool = False) -> dict[str, dict]:
    """Apply the label changes (``dry_run``: the API server checks them, nothing is persisted); returns
    node -> {label: new value or None when removed} of what changed (or would).

    Nodes are checked to exist before any is patched, so an unknown node writes nothing. A node already
    labelled as asked is not patched (idempotent, and no write shows in the API log).
    """
    core = CoreV1Api(api)
    plans = {node: split_label_changes(f"label_nodes.{node}", changes) for node, changes in label_nodes.items()}
    current = {}
    for node in plans:
        try:
            current[node] = core.read_node(node).metadata.labels or {}
        except ApiException as err:
            if err.status == 404:
                raise K8sMoveError(f"node {node!r} not found") from err
            raise
    changed = {}
    for node, (to_set, to_remove) in plans.items():
        patch = {key: value for key, value in to_set.items() if current[node].get(key) != value}
        patch |= {key: None for key in to_remove if key in current[node]}
        if patch:
            # merge patch: None deletes the key
            core.patch_node(node, {"metadata": {"labels": patch}}, **({"dry_run": "All"} if dry_run else {}))
            changed[node] = patch
    return changed
