"""managedFields: field sets in the real FieldsV1 format (f:/k:/v:), ownership on Update operations,
and server-side apply (merge by list map keys, conflicts, force, removal of fields no longer applied)."""
from __future__ import annotations

import json

from .. import errors
from ..resources import ResourceType
from ..store import copy_json, now_rfc3339
from .schemas import Schemas

MISSING = object()
# Metadata the server owns; never part of a field set.
UNTRACKED_METADATA = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                      "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"}
UNTRACKED_TOP = {"apiVersion", "kind"}
# Defaults of list map keys, so a key left out in a config finds its defaulted item (ports' protocol).
KEY_DEFAULTS = {"protocol": "TCP"}
Path = tuple


def _item_path(path: Path) -> Path | None:
    """The path of the keyed list item ``path`` marks (``k:{…}`` or its ``.``), else None."""
    if path and path[-1] == ".":
        path = path[:-1]
    return path if path and path[-1].startswith("k:") else None


def _remove_item(obj: dict, path: Path, item) -> None:
    """Drop ``item`` (by identity) from the list at ``path[:-1]``; a list left empty goes too (omitempty)."""
    parent = FieldSets.value_at(obj, path[:-1])
    if item is MISSING or not isinstance(parent, list):
        return
    parent[:] = [i for i in parent if i is not item]
    holder = FieldSets.value_at(obj, path[:-2]) if len(path) > 2 else obj
    if not parent and isinstance(holder, dict) and path[-2].startswith("f:"):
        holder.pop(path[-2][2:], None)


def _key_of(item: dict, keys: list[str]) -> str:
    return "k:" + json.dumps({k: item.get(k, KEY_DEFAULTS.get(k)) for k in keys if k in item or k in KEY_DEFAULTS},
                             separators=(",", ":"))


class FieldSets:
    def __init__(self, schemas: Schemas):
        self.schemas = schemas

    # ---- field sets ----------------------------------------------------------------------------------
    def of(self, rt: ResourceType, obj: dict, subresource: str | None = None) -> set[Path]:
        out: set[Path] = set()
        schema = self.schemas.for_resource(rt)
        for key, value in obj.items():
            if key in UNTRACKED_TOP or (key == "status") != (subresource == "status"):
                continue
            if key == "metadata":
                value = {k: v for k, v in (value or {}).items() if k not in UNTRACKED_METADATA}
                if not value:
                    continue
            self._walk(value, self.schemas.field(schema, key), ("f:" + key,), out)
        return out

    def _walk(self, value, schema, path: Path, out: set) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                self._walk(child, self.schemas.field(schema, key), path + ("f:" + key,), out)
        elif isinstance(value, list) and value and self.schemas.list_keys(schema):
            keys = self.schemas.list_keys(schema)
            for item in value:
                if isinstance(item, dict):
                    item_path = path + (_key_of(item, keys),)
                    out.add(item_path + (".",))
                    self._walk_item(item, self.schemas.items(schema), item_path, out)
        elif isinstance(value, list) and value and self.schemas.list_type(schema) == "set":
            out.update(path + ("v:" + json.dumps(v, separators=(",", ":")),) for v in value)
        else:
            out.add(path)

    def _walk_item(self, item: dict, schema, path: Path, out: set) -> None:
        for key, child in item.items():
            self._walk(child, self.schemas.field(schema, key), path + ("f:" + key,), out)

    # ---- paths ---------------------------------------------------------------------------------------
    @staticmethod
    def value_at(obj, path: Path):
        for part in path:
            if part == ".":
                continue
            kind, rest = part[0], part[2:]
            if kind == "f":
                if not isinstance(obj, dict) or rest not in obj:
                    return MISSING
                obj = obj[rest]
            elif kind == "k":
                want = json.loads(rest)
                obj = next((i for i in obj or [] if isinstance(i, dict) and all(
                    i.get(k, KEY_DEFAULTS.get(k)) == v for k, v in want.items())), MISSING) \
                    if isinstance(obj, list) else MISSING
            else:
                value = json.loads(rest)
                obj = value if isinstance(obj, list) and value in obj else MISSING
            if obj is MISSING:
                return MISSING
        return obj

    @staticmethod
    def remove(obj, path: Path) -> None:
        if path and path[-1] == ".":
            path = path[:-1]
        parent = FieldSets.value_at(obj, path[:-1]) if len(path) > 1 else obj
        last = path[-1]
        if parent is MISSING:
            return
        if last.startswith("f:") and isinstance(parent, dict):
            parent.pop(last[2:], None)
        elif isinstance(parent, list):
            target = FieldSets.value_at(obj, path)
            if target is not MISSING:
                parent[:] = [i for i in parent if i is not target and not (last.startswith("v:") and i == target)]

    @staticmethod
    def display(path: Path) -> str:
        out = ""
        for part in path:
            if part == ".":
                continue
            if part.startswith("f:"):
                out += "." + part[2:]
            elif part.startswith("k:"):
                out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(part[2:]).items()) + "]"
            else:
                out += f"[{part[2:]}]"
        return out

    @staticmethod
    def to_v1(paths: set[Path]) -> dict:
        root: dict = {}
        for path in sorted(paths):
            node = root
            for part in path:
                node = node.setdefault(part, {})
        return root

    @staticmethod
    def from_v1(tree: dict, prefix: Path = ()) -> set[Path]:
        out: set[Path] = set()
        for key, child in (tree or {}).items():
            if child:
                out |= FieldSets.from_v1(child, prefix + (key,))
            else:
                out.add(prefix + (key,))
        return out


class ManagedFields:
    """Maintains metadata.managedFields like the real server's field manager."""

    def __init__(self, schemas: Schemas):
        self.sets = FieldSets(schemas)

    @staticmethod
    def _entries(obj: dict | None) -> list[dict]:
        return list(((obj or {}).get("metadata") or {}).get("managedFields") or [])

    def _entry(self, rt, manager, operation, subresource, paths, time=None) -> dict:
        entry = {"manager": manager, "operation": operation, "apiVersion": rt.api_version,
                 "time": time or now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": self.sets.to_v1(paths)}
        if subresource:
            entry["subresource"] = subresource
        return entry

    @staticmethod
    def _same(entry: dict, manager: str, operation: str, subresource: str | None) -> bool:
        return (entry.get("manager"), entry.get("operation"), entry.get("subresource")) == \
            (manager, operation, subresource)

    def _rebuild(self, rt, entries, mine: tuple, my_paths: set, others_lose: set) -> list[dict]:
        manager, operation, subresource = mine
        out = []
        placed = False
        for entry in entries:
            paths = self.sets.from_v1(entry.get("fieldsV1"))
            if self._same(entry, *mine):
                placed = True
                out.append(entry if paths == my_paths else self._entry(rt, manager, operation, subresource, my_paths))
                continue
            kept = paths - others_lose
            if kept == paths:
                out.append(entry)
            elif kept:
                out.append(self._entry(rt, entry["manager"], entry["operation"], entry.get("subresource"), kept,
                                       entry.get("time")) | {"apiVersion": entry.get("apiVersion", rt.api_version)})
        if not placed and my_paths:
            out.append(self._entry(rt, manager, operation, subresource, my_paths))
        return [e for e in out if e.get("fieldsV1")]

    def track_update(self, rt: ResourceType, old: dict | None, new: dict, manager: str,
                     subresource: str | None = None) -> None:
        """Record an Update (create, PUT, non-apply PATCH) by manager on new, in place: the manager owns
        what it changed, and nobody keeps owning a field someone else changed or removed."""
        entries = self._entries(old) if old is not None else []
        new_paths = self.sets.of(rt, new, subresource)
        if old is None:
            changed = new_paths
        else:
            changed = {p for p in new_paths if self.sets.value_at(old, p) != self.sets.value_at(new, p)}
            changed |= self.sets.of(rt, old, subresource) - new_paths
        mine = (manager, "Update", subresource)
        current = next((self.sets.from_v1(e.get("fieldsV1")) for e in entries if self._same(e, *mine)), set())
        my_paths = (current | (changed & new_paths)) & new_paths
        new["metadata"]["managedFields"] = self._rebuild(rt, entries, mine, my_paths, changed)

    def apply(self, rt: ResourceType, live: dict | None, config: dict, manager: str, force: bool,
              subresource: str | None = None) -> dict:
        """Server-side apply of config over live (None: create); returns the new object."""
        schema = self.sets.schemas.for_resource(rt)
        config_paths = self.sets.of(rt, config, subresource)
        mine = (manager, "Apply", subresource)
        entries = self._entries(live)
        base = copy_json(live) if live is not None else {}
        conflicts = []
        for entry in entries:
            if self._same(entry, *mine):
                continue
            for path in sorted(self.sets.from_v1(entry.get("fieldsV1")) & config_paths):
                if path[-1] != "." and self.sets.value_at(base, path) != self.sets.value_at(config, path):
                    conflicts.append((entry, path))
        if conflicts and not force:
            raise self._conflict_error(rt, config, conflicts)
        merged = self._merge(base, config, schema)
        previous = next((self.sets.from_v1(e.get("fieldsV1")) for e in entries if self._same(e, *mine)), set())
        owned_by_others = set().union(*(self.sets.from_v1(e.get("fieldsV1")) for e in entries
                                        if not self._same(e, *mine)))
        doomed = sorted(previous - config_paths - owned_by_others, key=len, reverse=True)
        # keyed list items are found by their key fields: resolve them before those fields are removed
        items = [(path, self.sets.value_at(merged, path)) for path in (_item_path(p) for p in doomed) if path]
        for path in doomed:
            self.sets.remove(merged, path)
        for path, item in items:
            _remove_item(merged, path, item)
        lost = {path for _, path in conflicts}
        merged.setdefault("metadata", {})["managedFields"] = self._rebuild(rt, entries, mine, config_paths, lost)
        return merged

    def _merge(self, live, config, schema):
        if isinstance(config, dict) and isinstance(live, dict):
            out = dict(live)
            for key, value in config.items():
                out[key] = self._merge(live.get(key, MISSING), value, self.sets.schemas.field(schema, key))
            return out
        keys = self.sets.schemas.list_keys(schema)
        if isinstance(config, list) and isinstance(live, list):
            if keys:
                out = list(live)
                item_schema = self.sets.schemas.items(schema)
                for item in config:
                    if not isinstance(item, dict):
                        continue
                    key = _key_of(item, keys)
                    index = next((i for i, o in enumerate(out) if isinstance(o, dict) and _key_of(o, keys) == key),
                                 None)
                    if index is None:
                        out.append(copy_json(item))
                    else:
                        out[index] = self._merge(out[index], item, item_schema)
                return out
            if self.sets.schemas.list_type(schema) == "set":
                return list(live) + [v for v in config if v not in live]
        return copy_json(config)

    def _conflict_error(self, rt, config, conflicts) -> errors.ApiError:
        causes = [{"reason": "FieldManagerConflict",
                   "message": f'conflict with "{entry["manager"]}"'
                              + (f' using {entry.get("apiVersion")}' if entry.get("operation") == "Update" else ""),
                   "field": self.sets.display(path)} for entry, path in conflicts]
        lines = [f'{c["message"]}: {c["field"]}' for c in causes]
        summary = lines[0] if len(lines) == 1 else "\n- " + "\n- ".join(lines)
        name = (config.get("metadata") or {}).get("name", "")
        details = {"name": name, "kind": rt.plural, "causes": causes}
        if rt.group:
            details["group"] = rt.group
        return errors.ApiError(409, "Conflict", f"Apply failed with {len(causes)} conflict"
                               f"{'s' if len(causes) > 1 else ''}: {summary}", details)
