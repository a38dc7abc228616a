"""Fault injection: the registry the API server, the kubelets and the data plane consult.

A fault is one row: a kind from ``FAULT_KINDS`` and its parameters. Faults are added and cleared
through the Python API (``add``/``clear``), the admin endpoint (``handle_admin``, served under
``/kubesim/faults`` by kubesim's API server, or by the faults proxy in front of the real one:
controlplane/faultproxy.py) or ``python -m kubesim fault`` (faults_cli.py). Every change is logged, and each
fault counts how often it struck (``hits``).
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field

from .errors import ApiError, too_many_requests

log = logging.getLogger("kubesim.faults")

ADMIN_PATH = "/kubesim/faults"


@dataclass(frozen=True)
class Param:
    type: type
    default: object = None          # None: required
    help: str = ""


_VERB = Param(str, "*", "API verb (get, list, watch, create, update, patch, delete, …) or a pattern")
_RESOURCE = Param(str, "*", 'resource key ("pods", "apps/deployments", …) or a pattern')
_IMAGE = Param(str, help="image reference or pattern, e.g. 'postgres:*'")
_NODE = Param(str, help="node name or pattern")
_ON_NODE = Param(str, "*", "only on this node (name or pattern): a target that cannot run the image")

# kind -> (what it does, its parameters). The query methods below say how each kind strikes.
FAULT_KINDS: dict[str, tuple[str, dict[str, Param]]] = {
    "node-not-ready": ("the node stops heartbeating: NotReady, its pods are evicted after the grace",
                       {"node": _NODE}),
    "api-error": ("a fraction of API requests fail with 500, 429 (with Retry-After) or a 504 timeout",
                  {"verb": _VERB, "resource": _RESOURCE,
                   "code": Param(str, "500", "500, 429 or timeout"),
                   "fraction": Param(float, 1.0, "share of matching requests that fail, 0..1"),
                   "retry_after": Param(int, 1, "Retry-After seconds of a 429"),
                   "seconds": Param(float, 5.0, "how long a timeout hangs before its 504"),
                   "count": Param(int, 0, "strike this many times, then clear itself (0: forever)")}),
    "api-latency": ("matching API requests wait before they are handled",
                    {"verb": _VERB, "resource": _RESOURCE, "seconds": Param(float, help="added latency")}),
    "image-pull-error": ("pulling the image fails (ErrImagePull / ImagePullBackOff)",
                         {"image": _IMAGE, "node": _ON_NODE,
                          "message": Param(str, "", "the pull error's message")}),
    "image-crash": ("the container exits with code 1 right after it starts (CrashLoopBackOff)",
                    {"image": _IMAGE, "node": _ON_NODE}),
    "image-never-ready": ("the container runs but never becomes Ready", {"image": _IMAGE, "node": _ON_NODE}),
    "slow-startup": ("pods on the node take longer to start", {"node": _NODE,
                                                             "seconds": Param(float, help="extra startup time")}),
}

_TIMEOUT_MESSAGE = "Timeout: request did not complete within requested timeout - context deadline exceeded"
# api-error code -> the error the client gets.
_API_ERRORS = {
    "500": lambda f: ApiError(500, "InternalError", "Internal error occurred: injected by kubesim fault "
                              f"{f.id}"),
    "429": lambda f: too_many_requests("Too many requests, please try again later.", f.params["retry_after"]),
    "timeout": lambda f: ApiError(504, "Timeout", _TIMEOUT_MESSAGE, {"retryAfterSeconds": 1}),
}


@dataclass
class Fault:
    id: str
    kind: str
    params: dict
    created: float = field(default_factory=time.time)
    hits: int = 0

    def targets(self, **values: str) -> bool:
        """Every given value matches this fault's pattern for it."""
        return all(fnmatch.fnmatchcase(value, str(self.params[name])) for name, value in values.items())

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, **self.params, "hits": self.hits,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))}


def parse_params(kind: str, given: dict) -> dict:
    """The parameters of a fault of kind, typed and with defaults; ValueError when something is wrong."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    spec = FAULT_KINDS[kind][1]
    unknown = set(given) - set(spec)
    if unknown:
        raise ValueError(f"{kind}: unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(spec)}")
    params = {}
    for name, param in spec.items():
        if given.get(name) is None and param.default is None:
            raise ValueError(f"{kind}: parameter {name!r} is required")
        params[name] = param.type(given[name]) if given.get(name) is not None else param.default
    if kind == "api-error":
        if params["code"] not in _API_ERRORS:
            raise ValueError(f"api-error: code must be one of {', '.join(_API_ERRORS)}")
        if not 0 <= params["fraction"] <= 1:
            raise ValueError("api-error: fraction must be between 0 and 1")
    return params


class FaultRegistry:
    def __init__(self, seed: int | None = None, api_faults: bool = True):
        # False on the real control plane without the faults proxy: nothing there acts on api-* faults.
        self.api_faults = api_faults
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._ids = itertools.count(1)
        self._random = random.Random(seed)

    # ---- managing faults ------------------------------------------------------------------------
    def add(self, kind: str, **params) -> Fault:
        if kind.startswith("api-") and not self.api_faults:
            raise ValueError(f"{kind}: API faults are injected by kubesim's own API server or by the faults proxy "
                             "in front of the real control plane; this cluster has neither (start it with "
                             "api_faults=True, or `python -m kubesim up --control-plane real --api-faults`)")
        fault = Fault("", kind, parse_params(kind, params))
        with self._lock:
            fault.id = f"f{next(self._ids)}"
            self._faults[fault.id] = fault
        log.warning("fault %s added: %s %s", fault.id, kind, _describe(fault.params))
        return fault

    def clear(self, fault_id: str | None = None, kind: str | None = None, **match: str) -> list[Fault]:
        """Remove one fault by id, or every fault (of kind, whose parameters equal match); returns them."""
        with self._lock:
            gone = [f for f in self._faults.values()
                    if (fault_id is None or f.id == fault_id) and (kind is None or f.kind == kind)
                    and all(str(f.params.get(k)) == str(v) for k, v in match.items())]
            for fault in gone:
                del self._faults[fault.id]
        for fault in gone:
            log.warning("fault %s cleared: %s %s (struck %d times)", fault.id, fault.kind,
                        _describe(fault.params), fault.hits)
        return gone

    def list(self) -> list[dict]:
        with self._lock:
            return [f.as_dict() for f in self._faults.values()]

    # ---- what the others ask --------------------------------------------------------------------
    def api_fault(self, verb: str, resource_key: str) -> ApiError | None:
        """The error to answer this request with, if a fault strikes it (a timeout first hangs)."""
        with self._lock:
            fault = next((f for f in self._faults.values() if f.kind == "api-error"
                          and f.targets(verb=verb, resource=resource_key)
                          and self._random.random() < f.params["fraction"]), None)
            if fault is None:
                return None
            self._strike(fault)
        log.info("fault %s: %s %s answered with %s", fault.id, verb, resource_key, fault.params["code"])
        if fault.params["code"] == "timeout":
            time.sleep(fault.params["seconds"])
        return _API_ERRORS[fault.params["code"]](fault)

    def api_latency(self, verb: str, resource_key: str) -> float:
        return sum(f.params["seconds"] for f in self._matching("api-latency", verb=verb, resource=resource_key))

    def node_not_ready(self, node: str) -> bool:
        return bool(self._matching("node-not-ready", node=node))

    def extra_startup_seconds(self, node: str) -> float:
        return sum(f.params["seconds"] for f in self._matching("slow-startup", node=node))

    def image_pull_error(self, image: str, node: str) -> str | None:
        faults = self._matching("image-pull-error", image=image, node=node)
        if not faults:
            return None
        return faults[0].params["message"] or (
            f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack image '
            f'"{image}": failed to resolve reference "{image}": {image}: not found')

    def image_crashes(self, image: str, node: str) -> bool:
        return bool(self._matching("image-crash", image=image, node=node))

    def image_never_ready(self, image: str, node: str) -> bool:
        return bool(self._matching("image-never-ready", image=image, node=node))

    # ---- the admin endpoint ---------------------------------------------------------------------
    def handle_admin(self, method: str, path: str, body: bytes | str | dict | None = None) -> tuple[int, dict]:
        """``GET /kubesim/faults`` lists, ``POST`` (JSON {"kind": …, params…}) adds, ``DELETE`` clears all
        (or those matching a JSON body {"kind": …, params…}), ``DELETE /kubesim/faults/<id>`` clears one."""
        route = path.split("?", 1)[0].rstrip("/")
        if route != ADMIN_PATH and not route.startswith(ADMIN_PATH + "/"):
            return 404, {"error": f"no such path {path!r}; faults are under {ADMIN_PATH}"}
        fault_id = route[len(ADMIN_PATH) + 1:] or None
        try:
            request = body if isinstance(body, dict) else json.loads(body or "{}")
        except ValueError as error:
            return 400, {"error": f"body is not JSON: {error}"}
        if method == "GET" and fault_id is None:
            return 200, {"faults": self.list(), "kinds": {k: v[0] for k, v in FAULT_KINDS.items()}}
        if method == "POST" and fault_id is None:
            try:
                fault = self.add(request.pop("kind", None), **request)
            except (ValueError, TypeError) as error:
                return 400, {"error": str(error)}
            return 201, fault.as_dict()
        if method == "DELETE":
            gone = self.clear(fault_id, **request)
            if fault_id and not gone:
                return 404, {"error": f"no fault {fault_id!r}"}
            return 200, {"cleared": [f.as_dict() for f in gone]}
        return 405, {"error": f"{method} {path} is not supported"}

    # ---- internals ------------------------------------------------------------------------------
    def _matching(self, kind: str, **values: str) -> list[Fault]:
        if not self._faults:
            return []   # the usual case, asked on every pod start: no lock needed to see nothing
        with self._lock:
            faults = [f for f in self._faults.values() if f.kind == kind and f.targets(**values)]
            for fault in faults:
                self._strike(fault)
            return faults

    def _strike(self, fault: Fault) -> None:
        """Count a hit (under the lock); a fault with a count runs out."""
        fault.hits += 1
        if fault.params.get("count") and fault.hits >= fault.params["count"]:
            del self._faults[fault.id]
            log.warning("fault %s cleared after %d hits", fault.id, fault.hits)


def _describe(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())
