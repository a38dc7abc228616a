"""Label and field selectors as the apiserver takes them: parsing and matching are kubesim/labels.py's; here
are the fields each resource lets a fieldSelector name, and parse failures become 400 Bad Request."""
from __future__ import annotations

from typing import Callable

from .. import errors, labels

# Fields a fieldSelector may name beyond metadata.name/metadata.namespace, per storage key (upstream's
# field label conversion functions).
EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "pods": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"),
    "nodes": ("spec.unschedulable",),
    "namespaces": ("status.phase",),
    "secrets": ("type",),
    "events": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
               "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"),
    "events.k8s.io/events": ("regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                             "reason", "type", "reportingController"),
    "apps/replicasets": ("status.replicas",),
    "persistentvolumeclaims": (),
}
BASE_FIELDS = ("metadata.name", "metadata.namespace")

Matcher = Callable[[dict], bool]


def matcher(label_selector: str | None, field_selector: str | None, resource_key: str) -> Matcher | None:
    """A predicate over objects, or None when nothing is selected on (the fast path); 400 on bad syntax
    or a field the resource does not offer."""
    try:
        requirements = labels.parse(label_selector)
        fields = labels.parse_fields(field_selector)
    except ValueError as e:
        raise errors.bad_request(str(e))
    allowed = BASE_FIELDS + EXTRA_FIELDS.get(resource_key, ())
    for field, _, _ in fields:
        if field not in allowed:
            raise errors.bad_request(f"field label not supported: {field}")
    if not requirements and not fields:
        return None

    def matches(obj: dict) -> bool:
        return labels.matches(requirements, obj["metadata"].get("labels")) and labels.fields_match(fields, obj)
    return matches
