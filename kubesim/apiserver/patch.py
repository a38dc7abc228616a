"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch."""
from __future__ import annotations

import json

import jsonpatch

from .. import errors
from ..store import copy_json
from .schemas import Schemas

MERGE, JSON, STRATEGIC, APPLY = ("application/merge-patch+json", "application/json-patch+json",
                                 "application/strategic-merge-patch+json", "application/apply-patch+yaml")
PATCH_TYPES = (MERGE, JSON, STRATEGIC, APPLY)


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy_json(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict, operations) -> dict:
    if not isinstance(operations, list):
        raise errors.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    try:
        return jsonpatch.JsonPatch(operations).apply(target)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, TypeError,
            IndexError, ValueError) as e:
        raise errors.ApiError(422, "Invalid", f"the server rejected our request due to an error in our "
                              f"request: {e}") from e


class StrategicMerge:
    """Strategic merge patch with the patch strategies and merge keys of the upstream schemas."""

    def __init__(self, schemas: Schemas):
        self.schemas = schemas

    def apply(self, original: dict, patch: dict, schema: dict | None) -> dict:
        if not isinstance(patch, dict):
            raise errors.bad_request("strategic merge patch must be a JSON object")
        return self._merge_map(original, patch, schema)

    def _merge_map(self, original, patch: dict, schema) -> dict:
        if patch.get("$patch") == "replace":
            return {k: copy_json(v) for k, v in patch.items() if k != "$patch"}
        if patch.get("$patch") == "delete":
            return {}
        result = dict(original) if isinstance(original, dict) else {}
        retain = patch.get("$retainKeys")
        if retain is not None and not isinstance(retain, list):
            raise errors.bad_request("$retainKeys must be a list of field names")
        for key, value in patch.items():
            if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
                continue
            if key.startswith("$deleteFromPrimitiveList/"):
                field = key.split("/", 1)[1]
                if not isinstance(value, list) or not isinstance(result.get(field) or [], list):
                    raise errors.bad_request(f"{key} must be a list and name a list")
                result[field] = [v for v in result.get(field) or [] if v not in value]
                continue
            if value is None:
                result.pop(key, None)
                continue
            field_schema = self.schemas.field(schema, key)
            result[key] = self._merge_value(result.get(key), value, field_schema)
        for key, order in patch.items():   # $setElementOrder/<list>: the client's order wins, like upstream
            field = key.split("/", 1)[1] if key.startswith("$setElementOrder/") else None
            if field is None or not isinstance(result.get(field), list):
                continue
            if not isinstance(order, list):
                raise errors.bad_request(f"{key} must be a list")
            _, merge_key = self.schemas.patch_strategy(self.schemas.field(schema, field))
            server = original.get(field) if isinstance(original, dict) else None
            result[field] = normalize_order(result[field], order, server or [], merge_key)
        if retain is not None:
            result = {k: v for k, v in result.items() if k in retain}
        return result

    def _merge_value(self, original, value, schema):
        if isinstance(value, dict):
            return self._merge_map(original if isinstance(original, dict) else {}, value, schema)
        if isinstance(value, list):
            strategy, merge_key = self.schemas.patch_strategy(schema)
            if "merge" in strategy.split(",") and isinstance(original, list):
                return self._merge_list(original, value, merge_key, self.schemas.items(schema))
            return [self._strip_directives(v) for v in value]
        return value

    def _merge_list(self, original: list, patch: list, merge_key: str | None, item_schema) -> list:
        if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
            return [copy_json(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
        if merge_key is None:  # list of primitives merged as a set, then ordered like upstream's mergeSlice
            return normalize_order(list(original) + [v for v in patch if v not in original], patch, original, None)
        result = list(original)
        for item in patch:
            if not isinstance(item, dict):
                raise errors.bad_request(f"strategic merge patch: list item must be an object: {item!r}")
            index = next((i for i, o in enumerate(result)
                          if isinstance(o, dict) and o.get(merge_key) == item.get(merge_key)), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    result.pop(index)
            elif index is None:
                result.append(self._strip_directives(item))
            else:
                result[index] = self._merge_map(result[index], item, item_schema)
        kept = [p for p in patch if p.get("$patch") != "delete"]
        server = [o for o in original if _index(result, o, merge_key) >= 0]   # the live order after deletions
        return normalize_order(result, kept, server, merge_key)

    def _strip_directives(self, value):
        if isinstance(value, dict):
            return {k: self._strip_directives(v) for k, v in value.items() if not k.startswith("$")}
        if isinstance(value, list):
            return [self._strip_directives(v) for v in value]
        return value


def _index(items: list, item, merge_key: str | None) -> int:
    key = item.get(merge_key) if merge_key and isinstance(item, dict) else item
    for i, value in enumerate(items):
        if (value.get(merge_key) if merge_key and isinstance(value, dict) else value) == key:
            return i
    return -1


def normalize_order(merged: list, patch_order: list, server_order: list, merge_key: str | None) -> list:
    """apimachinery's normalizeElementOrder: the items named in the patch (in the patch's order) and the
    server-only items (in the live order) interleaved by the live order; a new item goes before them."""
    in_patch = sorted((m for m in merged if _index(patch_order, m, merge_key) >= 0),
                      key=lambda m: _index(patch_order, m, merge_key))
    server_only = [m for m in merged if _index(patch_order, m, merge_key) < 0]
    server_only.sort(key=lambda m: _index(server_order, m, merge_key) if _index(server_order, m, merge_key) >= 0
                     else len(server_order))
    result, i, j = [], 0, 0
    while i < len(server_only) or j < len(in_patch):
        if j >= len(in_patch):
            result.append(server_only[i])
            i += 1
        elif i >= len(server_only):
            result.append(in_patch[j])
            j += 1
        else:
            li, ri = _index(server_order, server_only[i], merge_key), _index(server_order, in_patch[j], merge_key)
            if li >= 0 and ri >= 0 and li < ri:
                result.append(server_only[i])
                i += 1
            else:
                result.append(in_patch[j])
                j += 1
    return result


def parse_json_body(body: bytes):
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.bad_request(f"error decoding patch: {e}") from e
