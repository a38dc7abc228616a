"""Kubernetes label syntax (the rules of k8s.io/apimachinery validation) and label selector matching."""
from __future__ import annotations

import re

from k8smove import K8sMoveError

# Regexes are shared with the DAG params' JSON schemas (k8smove.params) so trigger-time and
# preflight-time validation agree.
_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


def whole(body: str) -> str:
    """A pattern matching all of a string: ``$`` alone (Python's re, jsonschema) also matches before a final
    newline, so the lookahead refuses one; valid in ECMAScript too, which the trigger form's regexes are."""
    return rf"^{body}$(?!\n)"


LABEL_KEY_PATTERN = whole(rf"({_DNS_SUBDOMAIN}/)?{_NAME}")
LABEL_KEY_OR_REMOVAL_PATTERN = whole(rf"({_DNS_SUBDOMAIN}/)?{_NAME}-?")
LABEL_VALUE_PATTERN = whole(rf"({_NAME})?")
NODE_NAME_PATTERN = whole(_DNS_SUBDOMAIN)


def label_problem(key: str, value: str | None) -> str | None:
    """Why ``key=value`` is not a valid label, or None when it is."""
    prefix, _, name = key.rpartition("/")
    if not re.match(LABEL_KEY_PATTERN, key) or len(name) > 63 or len(prefix) > 253:
        return f"invalid label key {key!r}: must be [prefix/]name, name <= 63 alphanumeric, '-', '_' or '.'"
    if value is not None and (not isinstance(value, str) or not re.match(LABEL_VALUE_PATTERN, value)):
        return f"invalid label value {value!r} for key {key!r}: <= 63 alphanumeric, '-', '_' or '.'"
    return None


def check_selector(field: str, selector: dict) -> None:
    """Raise naming ``field`` unless ``selector`` is a non-empty map of valid labels."""
    if not isinstance(selector, dict) or not selector:
        raise K8sMoveError(f"{field}: must be a non-empty map of label key to value")
    for key, value in selector.items():
        if problem := label_problem(key, value):
            raise K8sMoveError(f"{field}: {problem}")


def split_label_changes(field: str, changes: dict) -> tuple[dict, list]:
    """``{"a": "1", "b-": None}`` -> ({"a": "1"}, ["b"]): labels to set and keys to remove (kubectl's ``key-``)."""
    to_set, to_remove = {}, []
    for key, value in changes.items():
        if key.endswith("-"):
            if problem := label_problem(key[:-1], None):
                raise K8sMoveError(f"{field}: {problem}")
            to_remove.append(key[:-1])
        else:
            if problem := label_problem(key, value):
                raise K8sMoveError(f"{field}: {problem}")
            to_set[key] = value
    return to_set, to_remove


def matches(selector: dict, labels: dict | None) -> bool:
    """Equality-based selector match, as a Deployment's nodeSelector does."""
    labels = labels or {}
    return all(labels.get(key) == value for key, value in selector.items())


def selector_string(selector: dict) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def node_selector_matches(node_selector: dict | None, node_name: str, labels: dict | None) -> bool:
    """A core/v1 NodeSelector (a PersistentVolume's nodeAffinity.required): terms ORed, each term's
    matchExpressions (labels) and matchFields (metadata.name) ANDed; an empty term matches nothing."""
    if not node_selector:
        return True
    fields = {"metadata.name": node_name}
    for term in node_selector.get("nodeSelectorTerms") or []:
        expressions, field_expressions = term.get("matchExpressions") or [], term.get("matchFields") or []
        if (expressions or field_expressions) and \
                all(_requirement_matches(e, labels or {}) for e in expressions) and \
                all(_requirement_matches(e, fields) for e in field_expressions):
            return True
    return False


def _requirement_matches(expression: dict, labels: dict) -> bool:
    key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels:
        try:
            have, want = int(labels[key]), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if operator == "Gt" else have < want
    return False
