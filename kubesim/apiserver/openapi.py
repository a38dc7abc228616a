"""OpenAPI documents for kubectl, built from the upstream definitions in kubernetes_validate.

kubectl 1.32 reads /openapi/v3 and the per-group-version documents to learn that the server
validates fields itself (the fieldValidation parameter of PATCH operations) and for the patch
strategies of client-side apply; /openapi/v2 is served as JSON for clients that ask for it.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from .. import errors
from ..resources import RESOURCE_TYPES, ResourceType
from .handlers import Response
from .schemas import definition_name, definitions

COMMON_DEFINITIONS = ("io.k8s.apimachinery.pkg.apis.meta.v1.Status",
                      "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
                      "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
                      "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent")
QUERY_PARAMETERS = {
    "dryRun": "When present, indicates that modifications should not be persisted.",
    "fieldManager": "fieldManager is a name associated with the actor or entity that is making these changes.",
    "fieldValidation": "fieldValidation instructs the server on how to handle objects in the request "
                       "containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
    "force": "Force is going to \"force\" Apply requests.",
}
PATCH_CONTENT_TYPES = ("application/apply-patch+yaml", "application/json-patch+json",
                       "application/merge-patch+json", "application/strategic-merge-patch+json")


def _convert(schema, ref_prefix: str):
    """JSON Schema 2020 (nullable type lists, closed objects) -> OpenAPI schema objects."""
    if isinstance(schema, list):
        return [_convert(s, ref_prefix) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref":
            out[key] = ref_prefix + value.rsplit("/", 1)[-1]
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out[key] = types[0] if types else "object"
        elif key == "additionalProperties" and value is False:
            continue
        elif key == "oneOf" and all(set(s) == {"type"} for s in value):
            out.update({"type": "string", "format": "int-or-string", "x-kubernetes-int-or-string": True})
        elif key == "properties":
            out[key] = {k: _convert(v, ref_prefix) for k, v in value.items()}
        else:
            out[key] = _convert(value, ref_prefix)
    return out


def _reachable(version: str, roots: list[str]) -> list[str]:
    defs = definitions(version)
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        text = json.dumps(defs[name])
        todo += [part.split('"', 1)[0] for part in text.split('#/$defs/')[1:]]
    return sorted(seen)


def _gvk(rt: ResourceType) -> dict:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _object_path(rt: ResourceType) -> str:
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    scope = "/namespaces/{namespace}" if rt.namespaced else ""
    return f"{prefix}{scope}/{rt.plural}/{{name}}"


def _operations(rt: ResourceType, ref: str) -> dict:
    def parameter(name: str) -> dict:
        kind = "boolean" if name == "force" else "string"
        return {"name": name, "in": "query", "description": QUERY_PARAMETERS[name], "schema": {"type": kind,
                                                                                              "uniqueItems": True}}
    response = {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}}
    common = {"x-kubernetes-group-version-kind": _gvk(rt), "tags": [rt.group or "core"]}
    ops = {
        "get": dict(common, operationId=f"read{rt.kind}", **{"x-kubernetes-action": "get"}, responses=response),
        "put": dict(common, operationId=f"replace{rt.kind}", **{"x-kubernetes-action": "put"},
                    parameters=[parameter(p) for p in ("dryRun", "fieldManager", "fieldValidation")],
                    requestBody={"content": {"*/*": {"schema": {"$ref": ref}}}, "required": True},
                    responses=response),
        "patch": dict(common, operationId=f"patch{rt.kind}", **{"x-kubernetes-action": "patch"},
                      parameters=[parameter(p) for p in ("dryRun", "fieldManager", "fieldValidation", "force")],
                      requestBody={"content": {t: {"schema": {"$ref": "#/components/schemas/"
                                                             "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}
                                               for t in PATCH_CONTENT_TYPES}, "required": True},
                      responses=response),
    }
    return {"parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
            + ([{"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}]
               if rt.namespaced else []), **ops}


@lru_cache(maxsize=32)
def group_version_document(version: str, group_version: str) -> bytes:
    types = [rt for rt in RESOURCE_TYPES if rt.api_version == group_version]
    names = {rt.key: definition_name(version, rt.group, rt.version, rt.kind) for rt in types}
    roots = [n for n in names.values() if n] + list(COMMON_DEFINITIONS)
    defs = definitions(version)
    schemas = {name: _convert(defs[name], "#/components/schemas/") for name in _reachable(version, roots)}
    paths = {_object_path(rt): _operations(rt, f"#/components/schemas/{names[rt.key]}")
             for rt in types if names[rt.key]}
    document = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": version}, "paths": paths,
                "components": {"schemas": schemas}}
    return json.dumps(document, separators=(",", ":")).encode()


def _gv_path(group_version: str) -> str:
    return f"apis/{group_version}" if "/" in group_version else f"api/{group_version}"


@lru_cache(maxsize=4)
def root_document(version: str) -> bytes:
    paths = {}
    for gv in sorted({rt.api_version for rt in RESOURCE_TYPES}):
        digest = hashlib.sha512(group_version_document(version, gv)).hexdigest()[:64].upper()
        paths[_gv_path(gv)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(gv)}?hash={digest}"}
    return json.dumps({"paths": paths}, separators=(",", ":")).encode()


@lru_cache(maxsize=4)
def swagger_document(version: str) -> bytes:
    defs = definitions(version)
    document = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": version}, "paths": {},
                "definitions": {name: _convert(schema, "#/definitions/") for name, schema in defs.items()}}
    return json.dumps(document, separators=(",", ":")).encode()


def serve(parts: list[str], query: dict, version: str) -> Response:
    if parts == ["v2"]:
        return Response(200, swagger_document(version))
    if parts == ["v3"]:
        return Response(200, root_document(version))
    if parts[:1] == ["v3"] and len(parts) >= 3:
        group_version = "/".join(parts[2:]) if parts[1] == "apis" else parts[2]
        if parts[1] in ("api", "apis") and any(rt.api_version == group_version for rt in RESOURCE_TYPES):
            return Response(200, group_version_document(version, group_version),
                            headers={"Cache-Control": "public, immutable"} if "hash" in query else {})
    raise errors.ApiError(404, "NotFound", "the server could not find the requested resource", {})
