"""Label and field selectors as the apiserver parses and evaluates them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .. import errors
from ..labels import split_top_level

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

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")

Matcher = Callable[[dict], bool]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str                 # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present



def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text:
        return []
    requirements = []
    for term in split_top_level(text):
        eq = _EQ_RE.match(term)
        if eq:
            op = "!=" if eq.group(2) == "!=" else "="
            requirements.append(Requirement(eq.group(1), op, (eq.group(3),)))
            continue
        match = _SET_RE.match(term)
        if not match or (match.group(1) and match.group(3)):
            raise errors.bad_request(f"unable to parse requirement: found '{term.strip()}', expected: "
                                     f"in, notin, =, ==, !=, gt, lt")
        negated, key, op, values = match.groups()
        if op:
            requirements.append(Requirement(key, op, tuple(v.strip() for v in values.split(",") if v.strip())))
        else:
            requirements.append(Requirement(key, "!" if negated else "exists"))
    return requirements


def selector_from_label_selector(selector: dict | None) -> list[Requirement]:
    """A metav1.LabelSelector (matchLabels/matchExpressions) as requirements."""
    selector = selector or {}
    reqs = [Requirement(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ())))
    return reqs


def field_value(obj: dict, path: str) -> str:
    value = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def parse_field_selector(text: str | None, resource_key: str) -> list[tuple[str, str, str]]:
    if not text:
        return []
    allowed = BASE_FIELDS + EXTRA_FIELDS.get(resource_key, ())
    out = []
    for term in split_top_level(text):
        match = _EQ_RE.match(term) or re.match(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not match:
            raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field, op, value = match.groups()
        if field not in allowed:
            raise errors.bad_request(f'field label not supported: {field}')
        out.append((field, "!=" if op == "!=" else "=", value))
    return out


def matcher(label_selector: str | None, field_selector: str | None, resource_key: str) -> Matcher | None:
    """A predicate over objects, or None when nothing is selected on (the fast path)."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, resource_key)
    if not labels and not fields:
        return None

    def matches(obj: dict) -> bool:
        obj_labels = obj["metadata"].get("labels") or {}
        if not all(r.matches(obj_labels) for r in labels):
            return False
        return all((field_value(obj, f) == v) == (op == "=") for f, op, v in fields)
    return matches
