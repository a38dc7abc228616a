"""REST semantics of every resource: get/list/create/update/patch/delete/deletecollection, the
subresources (status, scale, log, eviction, binding, finalize), dry runs, defaulting, validation,
managedFields, and the JSON/Table encodings."""
from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field

import yaml

from .. import errors
from ..containerlogs import LogOptions, LogUnavailable, log_container_id, read_log, serve_log
from ..config import ClusterConfig
from ..resources import PODS, SERVICES, ResourceType
from ..runtime import instance_of
from ..store import copy_json
from . import patch as patches, protobuf
from .allocators import ServiceAllocator
from .defaults import apply_defaults
from .managed import ManagedFields
from .routing import ResourceRoute, truthy
from .schemas import Schemas
from .selectors import matcher
from .tables import table
from .validation import check_object, check_schema, prune
from .watch import WatchStream

JSON = "application/json"
SERIALIZED_CACHE_SIZE = 50_000
PATCH_RETRIES = 5
RESOURCE_VERSION_WAIT_SECONDS = 3.0   # how long the watch cache waits for a version it has not seen yet
# Delete answers with the object for these (upstream's ReturnDeletedObject), a Status for the rest.
RETURNS_DELETED_OBJECT = {"pods", "services", "namespaces"}
FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
# What the eviction and binding subresources answer.
CREATED_STATUS = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
BODY_TYPES = ("application/json", "application/yaml", "application/x-yaml", "text/yaml", "*/*",
              "application/vnd.kubernetes.protobuf", "application/apply-patch+yaml")


@dataclass
class Response:
    code: int
    body: bytes
    content_type: str = JSON
    headers: dict = field(default_factory=dict)

    @classmethod
    def json(cls, obj, code: int = 200, headers: dict | None = None) -> "Response":
        return cls(code, json.dumps(obj, separators=(",", ":")).encode(), JSON, headers or {})

    @classmethod
    def status(cls, error: errors.ApiError) -> "Response":
        return cls.json(error.status(), error.code, dict(error.headers))


@dataclass
class Request:
    method: str
    route: ResourceRoute
    query: dict
    headers: dict
    body: bytes

    @property
    def rt(self) -> ResourceType:
        return self.route.rt

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), "")

    @property
    def dry_run(self) -> bool:
        value = self.query.get("dryRun")
        if value not in (None, "", "All"):
            raise errors.bad_request(f'Invalid dry run value "{value}": valid values are "All"')
        return value == "All"

    @property
    def wants_table(self) -> bool:
        return "as=Table" in self.header("Accept")

    @property
    def field_manager(self) -> str:
        manager = self.query.get("fieldManager")
        if manager:
            return manager
        agent = self.header("User-Agent") or "unknown"
        return agent.split("/", 1)[0]  # upstream's default manager: the user agent's program name

    @property
    def field_validation(self) -> str:
        value = self.query.get("fieldValidation") or "Warn"
        if value not in FIELD_VALIDATION:
            raise errors.bad_request(f'fieldValidation: Invalid value: "{value}": fieldValidation must be one '
                                     f'of "Ignore", "Warn", or "Strict"')
        return value


def decode_body(request: Request) -> object:
    content_type = request.header("Content-Type").split(";")[0].strip()
    if content_type and content_type not in BODY_TYPES:
        raise errors.ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                              f"accepted media types include: {', '.join(BODY_TYPES)}")
    if content_type == protobuf.CONTENT_TYPE:
        return protobuf.decode(request.body)
    try:
        if "yaml" in content_type:
            return yaml.safe_load(request.body or b"")
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise errors.bad_request(f"the object provided is unrecognized or malformed: {e}") from e


def object_with_metadata(obj, what: str = "the object provided") -> dict:
    """obj as a JSON object whose metadata is an object (created when missing); 400 otherwise."""
    if not isinstance(obj, dict):
        raise errors.bad_request(f"{what} is unrecognized or malformed: expected a JSON object")
    if obj.get("metadata") is None:
        obj["metadata"] = {}
    if not isinstance(obj["metadata"], dict):
        raise errors.bad_request(f"{what} is unrecognized or malformed: metadata must be an object")
    return obj


def _optional_int(value, name: str) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise errors.bad_request(f"{name}: invalid value {value!r}: must be an integer")


class ResourceHandlers:
    def __init__(self, store, config: ClusterConfig, runtime=None):
        self.store = store
        self.config = config
        self.runtime = runtime
        self.schemas = Schemas(config.kubernetes_version)
        self.managed = ManagedFields(self.schemas)
        self.strategic = patches.StrategicMerge(self.schemas)
        self.services = ServiceAllocator(store, config.network_id)
        self._serialized: dict[tuple, bytes] = {}
        self._serialized_lock = threading.Lock()

    # ---- encoding ------------------------------------------------------------------------------------
    def encode(self, rt: ResourceType, obj: dict, list_item: bool = False) -> bytes:
        """JSON of a stored (shared, never mutated) object, cached per resourceVersion. A list's items carry no
        kind or apiVersion, as a real API server sends them (clients that read ``item["kind"]`` break there)."""
        meta = obj["metadata"]
        key = (rt.key, meta.get("namespace"), meta.get("name"), meta.get("resourceVersion"), meta.get("uid"), list_item)
        data = self._serialized.get(key)
        if data is None:
            if list_item:
                obj = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
            data = json.dumps(obj, separators=(",", ":")).encode()
            with self._serialized_lock:
                if len(self._serialized) >= SERIALIZED_CACHE_SIZE:
                    del self._serialized[next(iter(self._serialized))]
                self._serialized[key] = data
        return data

    def _object_response(self, request: Request, obj: dict, code: int = 200, headers: dict | None = None):
        if request.wants_table:
            return Response.json(table(request.rt.key, [obj], {"resourceVersion": obj["metadata"].get(
                "resourceVersion", "")}, request.query.get("includeObject")), code, headers)
        return Response.json(obj, code, headers)

    # ---- dispatch ------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        route = request.route
        sub = route.subresource
        if sub in SUBRESOURCE_HANDLERS:
            return SUBRESOURCE_HANDLERS[sub](self, request)
        return VERB_HANDLERS[route.verb](self, request)

    # ---- reads ---------------------------------------------------------------------------------------
    def get(self, request: Request) -> Response:
        route = request.route
        self._await_resource_version(request.query.get("resourceVersion"), None)
        obj = self.store.get(route.rt, route.namespace, route.name)
        return self._object_response(request, obj)

    def list(self, request: Request) -> Response:
        rt, query = request.rt, request.query
        self._await_resource_version(query.get("resourceVersion"), query.get("resourceVersionMatch"))
        objs, rv = self.store.snapshot(rt, request.route.namespace)
        matches = matcher(query.get("labelSelector"), query.get("fieldSelector"), rt.key)
        if matches is not None:
            objs = [o for o in objs if matches(o)]
        objs, list_meta = self._page(objs, rv, query)
        if request.wants_table:
            return Response.json(table(rt.key, objs, list_meta, query.get("includeObject")))
        head = json.dumps({"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": list_meta},
                          separators=(",", ":")).encode()
        body = head[:-1] + b',"items":[' + b",".join(self.encode(rt, o, list_item=True) for o in objs) + b"]}"
        return Response(200, body)

    def _await_resource_version(self, rv: str | None, match: str | None) -> None:
        """resourceVersion (and resourceVersionMatch) of a get or list. The store serves its newest state: that
        is "not older than" any version it has reached; one it has not reached is waited for, then 504 like
        the watch cache; Exact is served only for the newest version (older ones count as compacted)."""
        def invalid_match(reason: str, message: str) -> errors.ApiError:
            return errors.invalid("ListOptions", "", [{"reason": reason, "field": "resourceVersionMatch",
                                                       "message": message}], "meta.k8s.io")
        if match and not rv:
            raise invalid_match("FieldValueForbidden",
                                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided")
        if match not in (None, "", "NotOlderThan", "Exact"):
            raise invalid_match("FieldValueNotSupported",
                                f'Unsupported value: "{match}": supported values: "Exact", "NotOlderThan", ""')
        if not rv or rv == "0":
            if match == "Exact" and rv == "0":
                raise invalid_match("FieldValueForbidden",
                                    'Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
            return
        if not rv.isdigit():
            raise errors.bad_request(f'invalid resource version "{rv}"')
        wanted, deadline = int(rv), time.monotonic() + RESOURCE_VERSION_WAIT_SECONDS
        while self.store.resource_version < wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        current = self.store.resource_version
        if current < wanted:
            raise errors.ApiError(504, "Timeout", f"Too large resource version: {wanted}, current: {current}",
                                  {"causes": [{"reason": "ResourceVersionTooLarge",
                                               "message": "Too large resource version"}], "retryAfterSeconds": 1})
        if match == "Exact" and wanted != current:
            raise errors.gone("The resourceVersion for the provided list is too old.")

    @staticmethod
    def _page(objs: list[dict], rv: int, query: dict) -> tuple[list[dict], dict]:
        list_meta = {"resourceVersion": str(rv)}
        token = query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = tuple(state["after"])
                list_meta["resourceVersion"] = state["rv"]
            except (ValueError, KeyError, TypeError) as e:
                raise errors.bad_request(f"continue key is not valid: {e}") from e
            objs = [o for o in objs if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
        limit = query.get("limit")
        if limit and limit.isdigit() and 0 < int(limit) < len(objs):
            objs, rest = objs[:int(limit)], len(objs) - int(limit)
            last = objs[-1]["metadata"]
            state = {"rv": list_meta["resourceVersion"], "after": [last.get("namespace", ""), last["name"]]}
            list_meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            list_meta["remainingItemCount"] = rest
        return objs, list_meta

    def watch(self, request: Request, register, unregister) -> WatchStream:
        rt, query = request.rt, request.query
        field_selector = query.get("fieldSelector")
        if request.route.name:
            name_term = f"metadata.name={request.route.name}"
            field_selector = f"{field_selector},{name_term}" if field_selector else name_term
        matches = matcher(query.get("labelSelector"), field_selector, rt.key)
        if request.wants_table:
            def encode(obj):
                return json.dumps(table(rt.key, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                        query.get("includeObject")), separators=(",", ":")).encode()
        else:
            def encode(obj):
                return self.encode(rt, obj)
        return WatchStream(self.store, rt, request.route.namespace, query, matches, encode, register, unregister)

    # ---- writes --------------------------------------------------------------------------------------
    def _body_object(self, request: Request) -> dict:
        obj = object_with_metadata(decode_body(request))
        rt = request.rt
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rt.api_version and not request.route.subresource:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({rt.api_version})")
        if kind and kind != rt.kind and not request.route.subresource:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        self._check_scope(request, obj["metadata"])
        return obj

    @staticmethod
    def _check_scope(request: Request, meta: dict) -> None:
        route = request.route
        if route.rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != route.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            meta["namespace"] = route.namespace
        if route.name and meta.get("name") and meta["name"] != route.name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                     f"({route.name})")
        if route.name:
            meta["name"] = route.name

    def _check_fields(self, request: Request, obj: dict) -> dict:
        """400 for values of the wrong type; unknown fields per fieldValidation (then dropped); returns headers."""
        rt = request.rt
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        unknown = check_schema(rt, obj, self.config.kubernetes_version)
        headers = {}
        if unknown:
            mode = request.field_validation
            if mode == "Strict":
                raise errors.bad_request("strict decoding error: " + ", ".join(f'unknown field "{f}"'
                                                                               for f, _ in unknown))
            if mode == "Warn":
                headers["Warning"] = ", ".join(f'299 - "unknown field \\"{f}\\""' for f, _ in unknown)
            for _, parts in unknown:
                prune(obj, parts)
        return headers

    def _admit(self, request: Request, obj: dict, old: dict | None) -> dict:
        """Field checks, defaults, semantic validation; returns response headers."""
        rt = request.rt
        headers = self._check_fields(request, obj)
        apply_defaults(rt.key, obj, creating=old is None,
                       toleration_seconds=getattr(self.config, "default_toleration_seconds", 300))
        if rt is SERVICES:
            self.services.allocate(obj, old)
        check_object(rt, obj, old)
        return headers

    def create(self, request: Request) -> Response:
        obj = self._body_object(request)
        return self._create(request, obj)

    def _create(self, request: Request, obj: dict, manager_tracked: bool = False) -> Response:
        rt = request.rt
        with self.services.lock if rt is SERVICES else contextlib.nullcontext():
            headers = self._admit(request, obj, None)
            if not manager_tracked:
                obj["metadata"].pop("managedFields", None)
                self.managed.track_update(rt, None, obj, request.field_manager)
            created = self.store.create(rt, obj, dry_run=request.dry_run)
        return self._object_response(request, created, 201, headers)

    def update(self, request: Request) -> Response:
        obj = self._body_object(request)
        route = request.route
        old = self.store.get(route.rt, route.namespace, route.name)
        return self._update(request, old, obj)

    def _update(self, request: Request, old: dict, obj: dict, manager_tracked: bool = False) -> Response:
        rt = request.rt
        headers = self._admit(request, obj, old)
        if not manager_tracked:
            obj["metadata"]["managedFields"] = old["metadata"].get("managedFields") or []
            self.managed.track_update(rt, old, obj, request.field_manager)
        updated = self.store.update(rt, obj, dry_run=request.dry_run)
        return self._object_response(request, updated, 200, headers)

    @staticmethod
    def _patch_type(request: Request, apply_allowed: bool = True) -> str:
        content_type = request.header("Content-Type").split(";")[0].strip()
        if content_type not in patches.PATCH_TYPES or (content_type == patches.APPLY and not apply_allowed):
            raise errors.unsupported_media_type(content_type)
        return content_type

    def patch(self, request: Request) -> Response:
        content_type = self._patch_type(request)
        if content_type == patches.APPLY:
            return self._apply(request)
        if truthy(request.query.get("force")):
            raise errors.bad_request("force: Invalid value: true: may not be specified for non-apply patch")
        document = patches.parse_json_body(request.body)
        route = request.route

        def attempt() -> Response:
            old = self.store.get(route.rt, route.namespace, route.name)
            patched = object_with_metadata(self._patched(request, content_type, document, old), "the patched object")
            meta = patched["metadata"]
            self._check_scope(request, meta)
            meta.setdefault("resourceVersion", old["metadata"]["resourceVersion"])
            return self._update(request, old, patched)
        # A patch naming a resourceVersion asks for the conflict; otherwise retry as the apiserver does.
        patch_meta = document.get("metadata") if isinstance(document, dict) else None
        pinned = isinstance(patch_meta, dict) and bool(patch_meta.get("resourceVersion"))
        return self._retrying(attempt, ("Conflict",) if not pinned else ())

    @staticmethod
    def _retrying(attempt, reasons: tuple[str, ...]) -> Response:
        """Run attempt again when it loses a race with another writer (409 with one of reasons)."""
        for remaining in range(PATCH_RETRIES - 1, -1, -1):
            try:
                return attempt()
            except errors.ApiError as e:
                if e.code != 409 or e.reason not in reasons or not remaining:
                    raise
        raise errors.ApiError(500, "InternalError", "retries exhausted")

    def _patched(self, request: Request, content_type: str, document, current: dict) -> dict:
        schema = self.schemas.for_resource(request.rt)
        if content_type == patches.MERGE:
            if not isinstance(document, dict):
                raise errors.bad_request("merge patch must be a JSON object")
            return patches.merge_patch(current, document)
        if content_type == patches.JSON:
            return patches.json_patch(current, document)
        return self.strategic.apply(current, document, schema)

    def _apply_config(self, request: Request) -> tuple[dict, str, bool]:
        """The applied configuration, its field manager and whether to force conflicts."""
        manager = request.query.get("fieldManager")
        if not manager:
            raise errors.bad_request("PATCH, application/apply-patch+yaml: fieldManager is required for apply "
                                     "requests")
        config = self._body_object(request)
        if not config.get("apiVersion") or not config.get("kind"):
            raise errors.bad_request("apiVersion and kind must be set in the applied configuration")
        if config["metadata"].get("managedFields"):
            raise errors.bad_request("metadata.managedFields must be nil")
        return config, manager, truthy(request.query.get("force"))

    def _apply(self, request: Request) -> Response:
        rt, route = request.rt, request.route
        config, manager, force = self._apply_config(request)
        pinned_rv = config["metadata"].pop("resourceVersion", None)  # a precondition, as with update

        def attempt() -> Response:
            live = self.store.find(rt, route.namespace, route.name)
            merged = self.managed.apply(rt, live, config, manager, force)
            if live is None:
                return self._create(request, merged, manager_tracked=True)
            merged["metadata"]["resourceVersion"] = pinned_rv or live["metadata"]["resourceVersion"]
            return self._update(request, live, merged, manager_tracked=True)
        return self._retrying(attempt, ("AlreadyExists",) if pinned_rv else ("Conflict", "AlreadyExists"))

    def delete(self, request: Request) -> Response:
        route = request.route
        options = self._delete_options(request)
        result = self.store.delete(route.rt, route.namespace, route.name, **options)
        return self._deleted_response(request, result)

    def _deleted_response(self, request: Request, obj: dict) -> Response:
        rt = request.rt
        still_there = self.store.find(rt, request.route.namespace, obj["metadata"]["name"]) is not None
        if still_there or rt.key in RETURNS_DELETED_OBJECT or request.dry_run:
            return Response.json(obj)
        details = {"name": obj["metadata"]["name"], "kind": rt.plural, "uid": obj["metadata"].get("uid")}
        if rt.group:
            details["group"] = rt.group
        return Response.json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "details": details})

    def _delete_options(self, request: Request) -> dict:
        body = decode_body(request) if request.body.strip() else {}
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise errors.bad_request("the object provided is unrecognized or malformed: DeleteOptions")
        query = request.query
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        propagation = body.get("propagationPolicy", query.get("propagationPolicy"))
        orphan = body.get("orphanDependents", query.get("orphanDependents"))
        if propagation is None and (orphan is True or isinstance(orphan, str) and truthy(orphan)):
            propagation = "Orphan"
        if propagation not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid("DeleteOptions", "", [{"reason": "FieldValueNotSupported",
                                 "field": "propagationPolicy", "message": f'Unsupported value: "{propagation}": '
                                 f'supported values: "Foreground", "Background", "Orphan", "nil"'}])
        preconditions = body.get("preconditions")
        if preconditions is not None and not isinstance(preconditions, dict):
            raise errors.bad_request("DeleteOptions: preconditions must be an object")
        dry_run = body.get("dryRun") == ["All"] or request.dry_run
        return {"grace_period": _optional_int(grace, "gracePeriodSeconds"), "propagation": propagation,
                "preconditions": preconditions, "dry_run": dry_run}

    def deletecollection(self, request: Request) -> Response:
        rt, query = request.rt, request.query
        options = self._delete_options(request)
        objs, rv = self.store.snapshot(rt, request.route.namespace)
        matches = matcher(query.get("labelSelector"), query.get("fieldSelector"), rt.key)
        deleted = []
        for obj in objs:
            if matches is None or matches(obj):
                meta = obj["metadata"]
                try:
                    deleted.append(self.store.delete(rt, meta.get("namespace"), meta["name"], **options))
                except errors.ApiError as e:
                    if e.code != 404:
                        raise
        return Response.json({"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                              "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": deleted})

    # ---- subresources --------------------------------------------------------------------------------
    def status(self, request: Request) -> Response:
        route = request.route
        if route.verb == "get":
            return self.get(request)
        old = self.store.get(route.rt, route.namespace, route.name)
        applied = route.verb == "patch" and self._patch_type(request) == patches.APPLY
        if route.verb == "update":
            obj = self._body_object(request)
        elif applied:
            obj = self.managed.apply(route.rt, old, *self._apply_config(request), subresource="status")
        else:
            content_type = self._patch_type(request)
            obj = object_with_metadata(self._patched(request, content_type, patches.parse_json_body(request.body),
                                                     old), "the patched object")
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            self._check_scope(request, obj["metadata"])
        candidate = dict(copy_json(old), status=obj.get("status"))  # what the status write would store
        if candidate["status"] is None:
            del candidate["status"]
        candidate["metadata"]["resourceVersion"] = obj["metadata"].get("resourceVersion") \
            or old["metadata"]["resourceVersion"]  # a PUT with a stale one is a conflict
        headers = self._check_fields(request, candidate)
        if applied:
            candidate["metadata"]["managedFields"] = obj["metadata"]["managedFields"]
        else:
            self.managed.track_update(route.rt, old, candidate, request.field_manager, "status")
        updated = self.store.update(route.rt, candidate, subresource="status", dry_run=request.dry_run)
        return Response.json(updated, headers=headers)

    def scale(self, request: Request) -> Response:
        route = request.route
        current = self.store.get(route.rt, route.namespace, route.name)
        if route.verb == "get":
            return Response.json(self._scale_view(current))
        view = self._scale_view(current)
        if route.verb == "update":
            new_view = decode_body(request)
        else:
            content_type = self._patch_type(request, apply_allowed=False)
            document = patches.parse_json_body(request.body)
            new_view = (patches.merge_patch(view, document) if content_type != patches.JSON
                        else patches.json_patch(view, document))
        new_view = object_with_metadata(new_view, "the Scale")
        spec = new_view.get("spec")
        replicas = spec.get("replicas") if isinstance(spec, dict) else None
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid("Scale", route.name, [{"reason": "FieldValueInvalid", "field": "spec.replicas",
                                 "message": f"Invalid value: {json.dumps(replicas)}: must be greater than or equal "
                                            f"to 0"}], "autoscaling")
        obj = copy_json(current)
        obj["spec"]["replicas"] = replicas
        obj["metadata"]["resourceVersion"] = new_view["metadata"].get("resourceVersion") \
            or current["metadata"]["resourceVersion"]
        self.managed.track_update(route.rt, current, obj, request.field_manager, None)
        updated = self.store.update(route.rt, obj, dry_run=request.dry_run)
        return Response.json(self._scale_view(updated))

    @staticmethod
    def _scale_view(obj: dict) -> dict:
        meta = obj["metadata"]
        selector = (obj.get("spec") or {}).get("selector") or {}
        terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": ",".join(terms)}}

    def _log_target(self, request: Request) -> tuple[dict, str, LogOptions]:
        """The pod, the container and the options of a pods/log request, checked as the API server does."""
        try:
            options = LogOptions.from_query(request.query)
        except ValueError as error:
            field, _, message = str(error).partition(": ")
            raise errors.invalid("PodLogOptions", request.route.name, [{
                "reason": "FieldValueInvalid", "message": message, "field": field}]) from None
        return (*self._pod_container(request), options)

    def _pod_container(self, request: Request) -> tuple[dict, str]:
        """The pod and the container a pods/log or pods/exec request names (the only one when it names none)."""
        route = request.route
        pod = self.store.get(PODS, route.namespace, route.name)
        containers = [c["name"] for c in pod["spec"].get("containers") or []]
        init = [c["name"] for c in pod["spec"].get("initContainers") or []]
        container = request.query.get("container")
        if not container:
            if len(containers) != 1:
                raise errors.bad_request(f"a container name must be specified for pod {route.name}, choose one of: "
                                         f"[{' '.join(containers)}]" + (f" or one of the init containers: "
                                                                         f"[{' '.join(init)}]" if init else ""))
            container = containers[0]
        elif container not in containers + init:
            raise errors.bad_request(f"container {container} is not valid for pod {route.name}")
        return pod, container

    def _log_lines(self, request: Request):
        """Checks the request now (the kubelet's answer for a container without that log is a 400); returns the
        lines read_log gives."""
        pod, container, options = self._log_target(request)
        if not pod["spec"].get("nodeName"):   # the API server's empty location: not scheduled, no log yet
            return iter(())
        try:
            instance = instance_of(log_container_id(pod, container, options.previous))
        except LogUnavailable as error:
            raise errors.bad_request(str(error)) from None
        uid = pod["metadata"]["uid"]
        if self.runtime is None or instance is None:
            return iter(())
        return read_log(self.runtime.log_path(uid, container, instance), options,
                        lambda: self.runtime.running(uid, container, instance))

    def log(self, request: Request) -> Response:
        return Response(200, b"".join(self._log_lines(request)), "text/plain")

    def follow_logs(self, request: Request):
        """Checks the request now; returns the streamer, which sends new log lines while the container runs."""
        lines = self._log_lines(request)
        return lambda http: serve_log(http, lines)

    def exec_session(self, request: Request, query: dict):
        """Checks the request now (the pod, its container running here); returns what upgrades the connection
        to a WebSocket exec or attach session (kubesim.kubeletapi.serve_exec/serve_attach, the kubelet API's own)."""
        from ..kubeletapi import serve_attach, serve_exec

        pod, container = self._pod_container(request)
        supervisor = getattr(self.runtime, "supervisor", lambda _: None)(pod["metadata"]["uid"])
        if supervisor is None or not supervisor.running(container):
            raise errors.bad_request(f'unable to upgrade connection: container not found ("{container}")')
        if request.route.subresource == "attach":
            return lambda http: serve_attach(http, supervisor, container, query)
        return lambda http: serve_exec(http, supervisor, container, query)

    def portforward_session(self, request: Request):
        """Checks the request now (the pod runs here); returns what upgrades the connection to kubectl's tunnelled
        port-forward (kubesim.kubeletapi.serve_portforward, the kubelet API's own)."""
        from ..kubeletapi import serve_portforward

        route = request.route
        pod = self.store.get(PODS, route.namespace, route.name)
        supervisor = getattr(self.runtime, "supervisor", lambda _: None)(pod["metadata"]["uid"])
        if supervisor is None:
            raise errors.bad_request("unable to upgrade connection: pod does not exist")
        return lambda http: serve_portforward(http, supervisor, self.runtime.network)

    def eviction(self, request: Request) -> Response:
        route = request.route
        body = decode_body(request) or {}
        options = (body.get("deleteOptions") or {}) if isinstance(body, dict) else None
        if not isinstance(options, dict):
            raise errors.bad_request("the object provided is unrecognized or malformed: Eviction")
        self.store.get(PODS, route.namespace, route.name)
        if request.dry_run:
            options = dict(options, dryRun=["All"])
        from ..controllers.disruption import evict  # lazily: the controllers import the store, not the server
        evict(self.store, route.namespace, route.name, options)
        return Response.json(CREATED_STATUS, 201)

    def binding(self, request: Request) -> Response:
        route = request.route
        body = decode_body(request)
        target = ((body or {}).get("target") or {}).get("name") if isinstance(body, dict) else None
        if not target:
            raise errors.invalid("Binding", route.name, [{"reason": "FieldValueRequired", "field": "target.name",
                                                          "message": "Required value"}])

        def bind(pod: dict) -> None:
            if pod["spec"].get("nodeName"):
                raise errors.conflict("pods/binding", route.name, f'pod {route.name} is already assigned to node '
                                      f'"{pod["spec"]["nodeName"]}"')
            pod["spec"]["nodeName"] = target
        if request.dry_run:
            bind(self.store.get(PODS, route.namespace, route.name))
        else:
            self.store.mutate(PODS, route.namespace, route.name, bind)
        return Response.json(CREATED_STATUS, 201)

    def finalize(self, request: Request) -> Response:
        route = request.route
        body = self._body_object(request)
        finalizers = (body.get("spec") or {}).get("finalizers") or []
        updated = self.store.mutate(route.rt, None, route.name,
                                    lambda ns: ns.setdefault("spec", {}).__setitem__("finalizers", finalizers))
        return Response.json(updated)


VERB_HANDLERS = {"get": ResourceHandlers.get, "list": ResourceHandlers.list, "create": ResourceHandlers.create,
                 "update": ResourceHandlers.update, "patch": ResourceHandlers.patch,
                 "delete": ResourceHandlers.delete, "deletecollection": ResourceHandlers.deletecollection}
SUBRESOURCE_HANDLERS = {"status": ResourceHandlers.status, "scale": ResourceHandlers.scale,
                        "log": ResourceHandlers.log, "eviction": ResourceHandlers.eviction,
                        "binding": ResourceHandlers.binding, "finalize": ResourceHandlers.finalize}
