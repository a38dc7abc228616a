"""Server-side apply of rendered manifests, with the prior state recorded for a rollback to restore."""
from __future__ import annotations

import base64
import difflib
import logging
import secrets

import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from k8smove import kube
from k8smove.render import GENERATE_KEYS_ANNOTATION, redact

DELETION_WAIT_SECONDS = 120   # an object being deleted is waited for before it is created anew

log = logging.getLogger(__name__)


def _identity(manifest: dict) -> dict:
    meta = manifest["metadata"]
    return {"apiVersion": manifest["apiVersion"], "kind": manifest["kind"],
            "metadata": {"name": meta["name"], **({"namespace": meta["namespace"]} if "namespace" in meta else {})}}


def _own(mapping: dict | None) -> dict:
    """Labels or annotations without the ones Kubernetes' controllers keep (deployment.kubernetes.io/revision …)."""
    return {k: v for k, v in (mapping or {}).items() if "kubernetes.io/" not in k}


def _restorable(live: dict) -> dict:
    """The live object as k8smove would apply it back; annotations controllers keep are left to them."""
    obj = kube.strip_server_fields(live)
    annotations = _own(obj["metadata"].get("annotations"))
    obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "annotations"}
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


def record_prior_state(api: ApiClient, manifests: list[dict]) -> list[dict]:
    """For each manifest: whether it exists, its resourceVersion and (Secrets excepted) the object to restore."""
    prior = []
    for manifest in manifests:
        live = kube.get(api, manifest)
        entry = {**_identity(manifest), "existed": live is not None,
                 "resourceVersion": live["metadata"]["resourceVersion"] if live else None}
        if live is not None and manifest["kind"] != "Secret":   # Secrets are create-only: never restored
            entry["object"] = _restorable(live)
        prior.append(entry)
    return prior


def _generated_keys(manifest: dict) -> list[str]:
    keys = manifest["metadata"].get("annotations", {}).get(GENERATE_KEYS_ANNOTATION, "")
    return [key.strip() for key in keys.split(",") if key.strip()]


def _with_generated_secret(manifest: dict, on_secret) -> dict:
    data = {}
    for key in _generated_keys(manifest):
        value = secrets.token_urlsafe(24)
        on_secret(value)
        data[key] = base64.b64encode(value.encode()).decode()
    return {**manifest, "data": data}


def _diff(before: dict | None, after: dict) -> str:
    def lines(obj):
        if obj is None:
            return []
        shown = redact(kube.strip_server_fields(obj))
        return yaml.safe_dump(shown, sort_keys=True).splitlines(keepends=True)
    return "".join(difflib.unified_diff(lines(before), lines(after), "live", "applied"))


def refusals_on_server(api: ApiClient, manifests: list[dict]) -> list[str]:
    """What the API server refuses of ``manifests``, one line per object (its reason, its message): a server-side
    dry run of each, in order, nothing written. A create-only Secret that exists is left out (it is never
    applied); one that does not is tried with placeholder values."""
    problems = []
    for manifest in manifests:
        if keys := _generated_keys(manifest):
            if kube.get(api, manifest) is not None:
                continue
            placeholder = base64.b64encode(b"dry-run").decode()
            manifest = {**manifest, "data": {key: placeholder for key in keys}}
        try:
            kube.server_side_apply(api, manifest, dry_run=True)
        except ApiException as err:
            if err.status not in (400, 404, 409, 422):
                raise   # not an answer about the manifest: the caller reports it with its reason
            problems.append(f"{kube.ref(manifest)}: {kube.status_message(err)}")
    return problems


def apply_manifests(api: ApiClient, manifests: list[dict], dry_run: bool = False,
                    on_secret=lambda value: None) -> list[dict]:
    """Apply each manifest; returns [{object, result}] with kubectl's words: created, configured, unchanged.

    A manifest annotated with k8smove.io/generate-keys is create-only: when absent it is created with
    fresh random values for those keys (passed to ``on_secret`` first, to be masked); when present it is
    left alone, so a re-apply never rotates a password.
    """
    results = []
    for manifest in manifests:
        live = kube.get(api, manifest)
        name = kube.ref(manifest)
        if live is not None and live["metadata"].get("deletionTimestamp") and not dry_run:
            # being deleted (a finalizer waits for its last user, e.g. a claim's pod): an apply now would only
            # update the dying object, and what needs it would wait for it forever
            kube.wait_for(lambda: True if kube.get(api, manifest) is None else None, DELETION_WAIT_SECONDS,
                          f"{name} is being deleted and was not gone")
            live = None
        if _generated_keys(manifest):
            if live is not None:
                results.append({"object": name, "result": "unchanged (create-only)"})
                continue
            manifest = _with_generated_secret(manifest, on_secret)
        applied = kube.server_side_apply(api, manifest, dry_run=dry_run)
        if live is None:
            result = "created"
        elif _changed(live, applied) or (dry_run and _diff(live, applied)):
            result = "configured"
        else:
            result = "unchanged"
        if dry_run:
            result += " (dry run)"
            log.info("%s %s\n%s", name, result, _diff(live, applied))
        else:
            log.info("%s %s", name, result)
        results.append({"object": name, "result": result})
    return results


def _changed(live: dict, applied: dict) -> bool:
    """Whether the apply changed the object: its generation, labels or annotations where it has a generation (a
    controller's write between our read and the apply — status, its revision annotation — does not count), else
    its resourceVersion."""
    before, after = live["metadata"], applied["metadata"]
    if "generation" not in before:
        return after.get("resourceVersion") != before.get("resourceVersion")
    return after.get("generation") != before["generation"] or any(
        _own(after.get(field)) != _own(before.get(field)) for field in ("labels", "annotations"))


def restore_prior_state(api: ApiClient, prior: list[dict]) -> list[dict]:
    """Undo what an apply changed: re-apply objects that existed, delete ones it created."""
    results = []
    for entry in prior:
        live = kube.get(api, entry)
        name = kube.ref(entry)
        if entry["existed"] and "object" in entry and live is not None \
                and live["metadata"]["resourceVersion"] != entry["resourceVersion"]:
            kube.server_side_apply(api, entry["object"])
            results.append({"object": name, "result": "restored"})
        elif not entry["existed"] and live is not None:
            kube.delete(api, entry)
            results.append({"object": name, "result": "deleted"})
        else:
            results.append({"object": name, "result": "unchanged"})
        log.info("%s %s", name, results[-1]["result"])
    return results
