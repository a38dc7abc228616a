"""URL -> (verb, resource type, namespace, name, subresource), like the apiserver's RequestInfo."""
from __future__ import annotations

from dataclasses import dataclass

from .. import errors
from ..resources import ResourceType, by_group_version
from .discovery import SUBRESOURCES

# HTTP method -> verb, for (collection, object) paths.
VERBS = {"GET": ("list", "get"), "POST": ("create", None), "PUT": (None, "update"),
         "PATCH": (None, "patch"), "DELETE": ("deletecollection", "delete")}
# strconv.ParseBool's true values, which is how the apiserver reads boolean query parameters.
TRUE_VALUES = ("1", "t", "T", "TRUE", "true", "True")


def truthy(value: str | None) -> bool:
    return value in TRUE_VALUES


@dataclass
class ResourceRoute:
    verb: str
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def not_found() -> errors.ApiError:
    return errors.ApiError(404, "NotFound", "the server could not find the requested resource", {})


def resolve(method: str, group: str, version: str, rest: list[str], query: dict) -> ResourceRoute:
    types = by_group_version(group, version)
    watch_path = bool(rest) and rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    if not rest:
        raise not_found()
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in types and types[rest[2]].namespaced:
        namespace, rest = rest[1], rest[2:]
    rt = types.get(rest[0])
    if rt is None or len(rest) > 3:
        raise not_found()
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource is not None and subresource not in rt.subresources:
        raise not_found()
    if rt.namespaced and namespace is None and name is not None:
        raise not_found()
    collection_verb, object_verb = VERBS.get(method, (None, None))
    verb = object_verb if name is not None else collection_verb
    if method == "POST" and subresource is not None:
        verb = "create"
    if verb in ("list", "get") and (watch_path or truthy(query.get("watch"))):
        verb = "watch"
    allowed = SUBRESOURCES[subresource][0] if subresource else rt.verbs
    if verb not in allowed or (verb == "create" and name is not None and subresource is None) \
            or (rt.namespaced and namespace is None and verb not in ("list", "watch")):
        raise errors.method_not_allowed("the server does not allow this method on the requested resource")
    return ResourceRoute(verb, rt, namespace, name, subresource)
