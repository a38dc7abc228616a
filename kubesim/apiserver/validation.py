"""Request validation: the upstream schemas (decode errors, unknown fields) and the semantic checks
(names, labels, required fields, immutable fields) that answer 422 Invalid with field causes."""
from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from typing import Callable

import jsonschema
from referencing import Registry, Resource

from .. import errors
from .. import labels as labelsel
from ..resources import ResourceType
from .schemas import definition_name, definitions

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + r")*"
QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                 "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
                 f"for validation is '{DNS1123_SUBDOMAIN}')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
             f"start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
             f"validation is '{DNS1123_LABEL}')")
LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                   "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
                   f"'my_value',  or '12345', regex used for validation is '({QUALIFIED_NAME})?')")
QUALIFIED_NAME_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                      "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
                      f"used for validation is '{QUALIFIED_NAME}')")

# Resources whose names are DNS-1123 labels rather than subdomains.
LABEL_NAMED = {"services", "namespaces"}
# Update rules: resource key -> (spec fields that may change, upstream's message when another one does).
SPEC_UPDATE_RULES = {
    "apps/statefulsets": (("replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                           "minReadySeconds", "revisionHistoryLimit"),
                          "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
                          "'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are "
                          "forbidden"),
    "persistentvolumeclaims": (("resources", "volumeAttributesClassName"),
                               "spec is immutable after creation except resources.requests and "
                               "volumeAttributesClassName for bound claims"),
}
IMMUTABLE_FIELDS = {
    "apps/deployments": ("spec.selector",),
    "apps/replicasets": ("spec.selector",),
    "apps/statefulsets": ("spec.selector",),
    "apps/daemonsets": ("spec.selector",),
    "services": ("spec.clusterIP",),
}
POD_UPDATE_MSG = ("pod updates may not change fields other than `spec.containers[*].image`,"
                  "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
                  "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                  "was previously negative)")


def cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict:
    return {"reason": reason, "message": message, "field": field}


def invalid_value(field: str, value, detail: str) -> dict:
    return cause(field, f"Invalid value: {json.dumps(value)}: {detail}")


def required(field: str) -> dict:
    return cause(field, "Required value", "FieldValueRequired")


# ---- schema validation -----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _validator(kubernetes_version: str, group: str, version: str, kind: str):
    name = definition_name(kubernetes_version, group, version, kind)
    if name is None:
        return None
    defs_uri = "https://kubernetes.io/api/_definitions.json"
    registry = Registry().with_resource(defs_uri, Resource.from_contents(
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": defs_uri,
         "$defs": definitions(kubernetes_version)}))
    return jsonschema.Draft202012Validator({"$ref": f"{defs_uri}#/$defs/{name}"}, registry=registry)


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


_GO_TYPES = {"integer": "int64", "string": "string", "boolean": "bool", "object": "struct", "array": "slice",
             "number": "float64"}
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}


def _expected_type(schema: dict) -> str:
    types = schema.get("type")
    if isinstance(types, list):
        types = next((t for t in types if t != "null"), "object")
    return _GO_TYPES.get(types or "object", types or "object")


def check_schema(rt: ResourceType, obj: dict, kubernetes_version: str) -> list[tuple[str, tuple]]:
    """Raise 400 for values of the wrong type; return the unknown fields as (dotted path, path parts).

    The schemas' "required" lists are not enforced: the real server requires fields in its validation
    code only (see OBJECT_CHECKS), and status writers routinely leave schema-required fields out."""
    validator = _validator(kubernetes_version, rt.group, rt.version, rt.kind)
    if validator is None:
        return []
    unknown = {}
    for error in validator.iter_errors(obj):
        for leaf in _leaf_errors(error):
            path = _path(leaf.absolute_path)
            if leaf.validator == "additionalProperties":
                known = (leaf.schema.get("properties") or {}).keys()
                for key in leaf.instance:
                    if key not in known:
                        unknown[f"{path}.{key}" if path else key] = tuple(leaf.absolute_path) + (key,)
            elif leaf.validator in ("type", "oneOf"):
                got = _JSON_TYPES.get(type(leaf.instance), "value")
                raise errors.bad_request(
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: json: cannot '
                    f'unmarshal {got} into Go struct field .{path} of type {_expected_type(leaf.schema)}')
    return sorted(unknown.items())


def prune(obj: dict, parts: tuple) -> None:
    """Drop one unknown field, as the real server's decoder does."""
    parent = obj
    for part in parts[:-1]:
        parent = parent[part]
    parent.pop(parts[-1], None)


def _leaf_errors(error):
    if error.context and error.validator not in ("oneOf",):
        for sub in error.context:
            yield from _leaf_errors(sub)
    else:
        yield error


# ---- semantic validation ---------------------------------------------------------------------------
def _name_causes(value: str, field: str, label: bool) -> list[dict]:
    pattern, msg, limit = (DNS1123_LABEL, LABEL_MSG, 63) if label else (DNS1123_SUBDOMAIN, SUBDOMAIN_MSG, 253)
    out = []
    if len(value) > limit:
        out.append(invalid_value(field, value, f"must be no more than {limit} characters"))
    if not re.fullmatch(pattern, value):
        out.append(invalid_value(field, value, msg))
    return out


def label_causes(labels, field: str) -> list[dict]:
    out = []
    if not isinstance(labels, dict):
        return out
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN, prefix)):
            out.append(invalid_value(field, key, "prefix part " + SUBDOMAIN_MSG))
        if not name or len(name) > 63 or not re.fullmatch(QUALIFIED_NAME, name):
            out.append(invalid_value(field, key, QUALIFIED_NAME_MSG))
        if not isinstance(value, str) or len(value) > 63 or (value and not re.fullmatch(QUALIFIED_NAME, value)):
            out.append(invalid_value(f"{field}", value, LABEL_VALUE_MSG))
    return out


def _get(obj, path: str):
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _pod_spec_causes(spec, field: str) -> list[dict]:
    if not isinstance(spec, dict):
        return [required(field)]
    out = []
    containers = spec.get("containers")
    if not containers:
        out.append(required(f"{field}.containers"))
    seen = set()
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            path = f"{field}.{kind}[{i}]"
            name = container.get("name") if isinstance(container, dict) else None
            if not name:
                out.append(required(f"{path}.name"))
            else:
                out += _name_causes(name, f"{path}.name", label=True)
                if name in seen:
                    out.append(cause(f"{path}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate"))
                seen.add(name)
            if isinstance(container, dict) and not container.get("image"):
                out.append(required(f"{path}.image"))
    return out


def _template_causes(obj: dict, path: str) -> list[dict]:
    template = _get(obj, path)
    out = []
    if not isinstance(template, dict):
        return [required(path)]
    labels = _get(template, "metadata.labels") or {}
    out += label_causes(labels, f"{path}.metadata.labels")
    out += _pod_spec_causes(template.get("spec"), f"{path}.spec")
    selector = _get(obj, "spec.selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        out.append(required("spec.selector"))
    else:
        out += label_causes(selector.get("matchLabels"), "spec.selector.matchLabels")
        reqs = _label_selector_requirements(selector)
        if reqs is None:
            out.append(invalid_value("spec.selector", selector, "invalid label selector"))
        elif reqs and not labelsel.matches(reqs, labels):
            out.append(invalid_value(f"{path}.metadata.labels", labels,
                                     "`selector` does not match template `labels`"))
    return out


def _label_selector_requirements(selector: dict) -> list | None:
    """A metav1.LabelSelector's requirements, or None when it is malformed (LabelSelectors know four operators)."""
    try:
        reqs = labelsel.from_label_selector(selector)
    except (AttributeError, KeyError, TypeError):
        return None
    return reqs if all(op in ("In", "NotIn", "Exists", "DoesNotExist") for _, op, _ in reqs) else None


def _special_ip_problem(value) -> str | None:
    """ValidateNonSpecialIP's verdict: what an API server says of an address no Service may claim."""
    try:
        ip = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        return "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
    if ip.is_unspecified:
        return "may not be unspecified (0.0.0.0, ::)"
    if ip.is_loopback:
        return "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    if ip.is_link_local:
        return "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
    if ip.is_multicast:
        return "may not be a multicast address (224.0.0.0/4, ff00::/8)"
    return None


def _service_causes(svc: dict) -> list[dict]:
    spec = svc.get("spec") or {}
    out = []
    for i, address in enumerate(spec.get("externalIPs") or []):
        if problem := _special_ip_problem(address):
            out.append(invalid_value(f"spec.externalIPs[{i}]", address, problem))
    if spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None" and not spec.get("ports"):
        out.append(required("spec.ports"))
    for i, port in enumerate(spec.get("ports") or []):
        if not isinstance(port, dict) or not isinstance(port.get("port"), int) or not 0 < port["port"] < 65536:
            out.append(invalid_value(f"spec.ports[{i}].port", (port or {}).get("port") if isinstance(port, dict)
                                     else port, "must be between 1 and 65535, inclusive"))
        if len(spec.get("ports")) > 1 and isinstance(port, dict) and not port.get("name"):
            out.append(required(f"spec.ports[{i}].name"))
    return out


def _pvc_causes(pvc: dict) -> list[dict]:
    spec = pvc.get("spec") or {}
    out = []
    if not spec.get("accessModes"):
        out.append(required("spec.accessModes"))
    if not _get(spec, "resources.requests.storage") and not spec.get("volumeName"):
        out.append(required("spec.resources[storage]"))
    return out


# Per-resource semantic checks on the whole object.
OBJECT_CHECKS: dict[str, Callable[[dict], list[dict]]] = {
    "pods": lambda pod: _pod_spec_causes(pod.get("spec"), "spec"),
    "apps/deployments": lambda d: _template_causes(d, "spec.template"),
    "apps/replicasets": lambda d: _template_causes(d, "spec.template"),
    "apps/statefulsets": lambda d: _template_causes(d, "spec.template"),
    "apps/daemonsets": lambda d: _template_causes(d, "spec.template"),
    "services": _service_causes,
    "persistentvolumeclaims": _pvc_causes,
}


def _immutable_causes(rt: ResourceType, old: dict, new: dict) -> list[dict]:
    out = []
    for path in IMMUTABLE_FIELDS.get(rt.key, ()):
        if _get(new, path) != _get(old, path):
            out.append(invalid_value(path, _get(new, path), "field is immutable"))
    if rt.key in SPEC_UPDATE_RULES:
        mutable, message = SPEC_UPDATE_RULES[rt.key]

        def fixed(spec) -> dict:
            return {k: v for k, v in (spec or {}).items() if k not in mutable}
        if fixed(new.get("spec")) != fixed(old.get("spec")):
            out.append(cause("spec", f"Forbidden: {message}", "FieldValueForbidden"))
    if rt.key == "pods" and _pod_spec_changed(old.get("spec") or {}, new.get("spec") or {}):
        out.append(cause("spec", f"Forbidden: {POD_UPDATE_MSG}", "FieldValueForbidden"))
    return out


# Pod spec fields an update may change (tolerations only by additions, checked separately).
POD_MUTABLE_SPEC = {"activeDeadlineSeconds": None, "tolerations": None, "terminationGracePeriodSeconds": None,
                    "schedulingGates": None}


def _pod_spec_changed(old: dict, new: dict) -> bool:
    def comparable(spec: dict) -> dict:
        spec = dict(spec, **POD_MUTABLE_SPEC)
        for kind in ("containers", "initContainers"):
            spec[kind] = [dict(c, image=None) if isinstance(c, dict) else c for c in spec.get(kind) or []]
        return spec
    old_tolerations = old.get("tolerations") or []
    added_only = (new.get("tolerations") or [])[:len(old_tolerations)] == old_tolerations
    return comparable(old) != comparable(new) or not added_only


def check_object(rt: ResourceType, obj: dict, old: dict | None) -> None:
    """422 Invalid with every cause found; old is the stored object on update."""
    meta = obj.get("metadata") or {}
    out = []
    name = meta.get("name")
    if name and old is None:
        out += _name_causes(name, "metadata.name", rt.key in LABEL_NAMED)
    elif not name and not meta.get("generateName"):
        out.append(cause("metadata.name", "Required value: name or generateName is required",
                         "FieldValueRequired"))
    out += label_causes(meta.get("labels"), "metadata.labels")
    check = OBJECT_CHECKS.get(rt.key)
    if check:
        out += check(obj)
    if old is not None:
        out += _immutable_causes(rt, old, obj)
    if out:
        raise errors.invalid(rt.kind, name or meta.get("generateName", ""), out, rt.group)
