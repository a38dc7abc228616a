"""Label and field selector matching, shared by the API server (list/watch) and the controllers.

A selector is held as a list of requirements (key, operator, values) whatever its source: a
metav1.LabelSelector dict, a Service's plain map, a NodeSelectorTerm's matchExpressions, or the
query-string syntax ``a=b,c!=d,e in (x,y),!f``.
"""
from __future__ import annotations

import re
from typing import Iterable

Requirement = tuple[str, str, tuple[str, ...]]   # (key, operator, values); operators as in the API


def requirement_matches(req: Requirement, labels: dict | None) -> bool:
    key, op, values = req
    labels = labels or {}
    present = key in labels
    value = labels.get(key)
    if op in ("In", "=", "=="):
        return present and value in values
    if op in ("NotIn", "!="):
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        try:
            have, want = int(value), int(values[0])
        except (TypeError, ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    raise ValueError(f"unknown selector operator {op!r}")


def matches(requirements: Iterable[Requirement], labels: dict | None) -> bool:
    return all(requirement_matches(r, labels) for r in requirements)


def from_map(selector: dict | None) -> list[Requirement]:
    """A Service-style (or matchLabels) map: every key must equal its value."""
    return [(k, "In", (v,)) for k, v in (selector or {}).items()]


def from_expressions(expressions: list[dict] | None) -> list[Requirement]:
    return [(e["key"], e["operator"], tuple(str(v) for v in e.get("values") or ()))
            for e in expressions or ()]


def from_label_selector(selector: dict | None) -> list[Requirement]:
    """metav1.LabelSelector; note that an empty selector matches everything, a None one nothing."""
    selector = selector or {}
    return from_map(selector.get("matchLabels")) + from_expressions(selector.get("matchExpressions"))


def label_selector_matches(selector: dict | None, labels: dict | None) -> bool:
    if selector is None:
        return False
    return matches(from_label_selector(selector), labels)


def map_matches(selector: dict | None, labels: dict | None) -> bool:
    """Service selectors: a missing or empty map selects nothing."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|!=|=)\s*([A-Za-z0-9_.-]*))?\s*$")


def split_top_level(text: str) -> list[str]:
    """Selector terms: split on commas outside parentheses, empty terms dropped."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def parse(text: str | None) -> list[Requirement]:
    """The ``?labelSelector=`` / ``kubectl -l`` syntax; ValueError (worded like upstream) when it does not parse."""
    requirements: list[Requirement] = []
    for part in split_top_level(text or ""):
        m = _SET_RE.match(part)
        negated = m and m.group(1)
        if not m or (negated and (m.group(3) or m.group(5))):
            raise ValueError(f"unable to parse requirement: found '{part.strip()}', expected: "
                             f"in, notin, =, ==, !=, gt, lt")
        _, key, set_op, set_values, op, value = m.groups()
        if negated:
            requirements.append((key, "DoesNotExist", ()))
        elif set_op:
            values = tuple(v.strip() for v in set_values.split(",") if v.strip())
            requirements.append((key, "In" if set_op == "in" else "NotIn", values))
        elif op:
            requirements.append((key, "NotIn" if op == "!=" else "In", (value,)))
        else:
            requirements.append((key, "Exists", ()))
    return requirements


def field_value(obj: dict, path: str) -> str:
    """``metadata.name``, ``spec.nodeName``, ``status.phase`` … as strings for field selectors."""
    current = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    if isinstance(current, bool):
        return "true" if current else "false"
    return "" if current is None else str(current)


_FIELD_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*(.*?)\s*$")


def parse_fields(text: str | None) -> list[tuple[str, str, str]]:
    """``?fieldSelector=spec.nodeName=node1,status.phase!=Running`` -> [(path, op, value)]; ValueError
    (worded like upstream) when it does not parse."""
    out = []
    for part in split_top_level(text or ""):
        m = _FIELD_RE.match(part)
        if not m:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{part}'")
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def fields_match(requirements: list[tuple[str, str, str]], obj: dict) -> bool:
    return all((field_value(obj, path) == value) == (op == "=") for path, op, value in requirements)
