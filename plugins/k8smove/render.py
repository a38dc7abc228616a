"""Render include/templates/*.yaml.j2 into validated Kubernetes manifests.

Templates run in Jinja2's SandboxedEnvironment with StrictUndefined, and every ``{{ expression }}`` is
finalized to its JSON form: a string becomes a double-quoted YAML scalar, a map a flow mapping of quoted
scalars. A conf value therefore cannot add YAML structure, and output is never rendered twice, so a value
containing "{{ ... }}" stays text. Templates build names with ``~`` (``{{ release ~ "-db" }}``).
"""
from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import yaml
from jinja2 import FileSystemLoader, StrictUndefined, Undefined
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from k8smove import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    K8sMoveError,
)

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "include" / "templates"
# Apply order: the release record first (always rendered), the DB before the App so the DB Service (and
# its Secret) exist when App pods start.
TEMPLATE_ORDER = ("release", "db", "app")
KUBERNETES_VERSION = "1.32"            # schema version manifests are validated against
GENERATE_KEYS_ANNOTATION = "k8smove.io/generate-keys"
REDACTED = "<redacted>"


def _quoted(value) -> str:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()    # finalize sees Undefined before str() would raise
    return json.dumps(value, sort_keys=True)


def _environment(template_dir: Path) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(template_dir)),
        undefined=StrictUndefined,
        finalize=_quoted,
        autoescape=False,
        keep_trailing_newline=True,
    )


# Render values a move passes that the release does not keep: placement (the workloads' nodeSelector holds it)
# and the DB instance the Service selects while a switchover is under way.
TRANSIENT_VALUES = ("node_label", "db_serving_instance")


def recorded_values(values: dict) -> dict:
    """What the release ConfigMap keeps; ``db_instance``: the DB instance that serves (0 when never moved)."""
    return {key: value for key, value in values.items() if key not in TRANSIENT_VALUES}


def _context(values: dict) -> dict:
    release = values["release"]

    def labels(component: str | None) -> dict:
        common = {LABEL_NAME: "k8smove-demo", LABEL_INSTANCE: release, LABEL_MANAGED_BY: MANAGED_BY}
        return {**common, LABEL_COMPONENT: component} if component else common

    instance = values.get("db_instance", 0)
    return {
        **values,
        "db_instance": instance,
        "db_serving_instance": values.get("db_serving_instance", instance),
        "labels": {"release": labels(None), "app": labels("app"), "db": labels("db")},
        "selectors": {c: {LABEL_INSTANCE: release, LABEL_COMPONENT: c} for c in ("app", "db")},
        "recorded_values": json.dumps(recorded_values(values), sort_keys=True),
    }


def render_manifests(values: dict, components, template_dir: Path = TEMPLATE_DIR,
                     kubernetes_version: str = KUBERNETES_VERSION) -> list[dict]:
    """Manifests of the release template and the given components' templates, validated; raises K8sMoveError."""
    env = _environment(template_dir)
    context = _context(values)
    manifests = []
    for name in (n for n in TEMPLATE_ORDER if n == "release" or n in components):
        template_name = f"{name}.yaml.j2"
        try:
            text = env.get_template(template_name).render(context)
            documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except (TemplateError, yaml.YAMLError) as err:
            raise K8sMoveError(f"{template_name}: {err}") from err
        for doc in documents:
            _validate(template_name, doc, kubernetes_version)
        manifests.extend(documents)
    return manifests


def _validate(template_name: str, manifest: dict, kubernetes_version: str) -> None:
    where = f"{template_name}: {manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise K8sMoveError(f"{where}: {'/'.join(map(str, err.path))}: {err.message}") from err
    except kubernetes_validate.SchemaNotFoundError as err:
        raise K8sMoveError(f"{where}: no schema: {err}") from err
    if manifest["kind"] == "Secret" and (manifest.get("data") or manifest.get("stringData")):
        # Secret values are generated at apply time (create-only); a template must never carry one.
        raise K8sMoveError(f"{where}: templates must not contain secret data; use {GENERATE_KEYS_ANNOTATION}")


def redact(manifest: dict) -> dict:
    """A copy safe to show: Secret values replaced."""
    if manifest.get("kind") != "Secret":
        return manifest
    shown = dict(manifest)
    for field in ("data", "stringData"):
        if field in shown:
            shown[field] = {key: REDACTED for key in shown[field]}
    return shown


def to_yaml(manifests: list[dict]) -> str:
    return yaml.safe_dump_all([redact(m) for m in manifests], sort_keys=False)
