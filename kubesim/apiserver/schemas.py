"""The upstream OpenAPI definitions shipped in the kubernetes_validate package, and walking them.

Patch strategies, list map keys (strategic merge, server-side apply), validation and the OpenAPI
documents kubectl reads all come from these definitions.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib.resources import files

from ..resources import ResourceType


def _schema_root(kubernetes_version: str):
    wanted = tuple(int(p) for p in re.findall(r"\d+", kubernetes_version)[:2])
    root = files("kubernetes_validate").joinpath("kubernetes-json-schema")
    available = sorted((tuple(int(p) for p in re.findall(r"\d+", d.name)[:2]), d.name)
                       for d in root.iterdir() if d.name.endswith("-local-strict"))
    fitting = [name for version, name in available if version <= wanted] or [available[0][1]]
    return root.joinpath(fitting[-1])


@lru_cache(maxsize=4)
def definitions(kubernetes_version: str) -> dict[str, dict]:
    """Definition name (e.g. io.k8s.api.core.v1.Pod) -> schema; refs look like #/$defs/<name>."""
    with _schema_root(kubernetes_version).joinpath("_definitions.json").open() as f:
        return json.load(f)["$defs"]


@lru_cache(maxsize=256)
def definition_name(kubernetes_version: str, group: str, version: str, kind: str) -> str | None:
    for name, schema in definitions(kubernetes_version).items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or ():
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, kind):
                return name
    return None


class Schemas:
    """Schema lookups for one Kubernetes version."""

    def __init__(self, kubernetes_version: str):
        self.version = kubernetes_version
        self.defs = definitions(kubernetes_version)

    def for_kind(self, group: str, version: str, kind: str) -> dict | None:
        name = definition_name(self.version, group, version, kind)
        return self.defs[name] if name else None

    def for_resource(self, rt: ResourceType) -> dict | None:
        return self.for_kind(rt.group, rt.version, rt.kind)

    def resolve(self, schema: dict | None) -> dict | None:
        while schema and "$ref" in schema:
            schema = self.defs[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def field(self, schema: dict | None, key: str) -> dict | None:
        """The (unresolved) schema of a map value or struct field, None when unknown."""
        schema = self.resolve(schema)
        if not schema:
            return None
        props = schema.get("properties")
        if props is not None and key in props:
            return props[key]
        extra = schema.get("additionalProperties")
        return extra if isinstance(extra, dict) else None

    def items(self, schema: dict | None) -> dict | None:
        schema = self.resolve(schema)
        return schema.get("items") if schema else None

    def list_keys(self, schema: dict | None) -> list[str] | None:
        """Server-side apply: the keys of a list of type map, else None."""
        schema = self.resolve(schema) or {}
        if schema.get("x-kubernetes-list-type") == "map":
            return schema.get("x-kubernetes-list-map-keys")
        return None

    def list_type(self, schema: dict | None) -> str:
        schema = self.resolve(schema) or {}
        return schema.get("x-kubernetes-list-type") or "atomic"

    def patch_strategy(self, schema: dict | None) -> tuple[str, str | None]:
        """Strategic merge patch: (strategy, merge key) of a field."""
        schema = schema or {}
        resolved = self.resolve(schema) or {}
        strategy = schema.get("x-kubernetes-patch-strategy") or resolved.get("x-kubernetes-patch-strategy") or ""
        key = schema.get("x-kubernetes-patch-merge-key") or resolved.get("x-kubernetes-patch-merge-key")
        return strategy, key
