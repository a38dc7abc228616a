"""What every controller shares: a deduplicating work queue fed by store listeners, one worker thread,
delayed requeues on one shared timer thread, and a clean stop."""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

from .. import errors
from ..config import ClusterConfig
from ..store import Event, Store

log = logging.getLogger("kubesim.controllers")


class Timers:
    """One thread that runs callbacks at their deadlines, for every controller and kubelet."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="kubesim-timers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def call_later(self, seconds: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, seconds), next(self._seq), fn))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a timer callback must never kill the shared thread
                log.exception("timer callback failed")


@dataclass
class Context:
    """Everything a controller may use; built once by the ControllerManager."""
    store: Store
    config: ClusterConfig
    runtime: object
    faults: object | None
    timers: Timers
    workers: "WorkerPool"
    cache: "object"      # controllers.cache.Cache
    events: "object"     # controllers.events.EventRecorder

    def fault(self, method: str, default, *args):
        """Ask the fault registry, tolerating its absence or an older version without the method."""
        fn = getattr(self.faults, method, None) if self.faults is not None else None
        return fn(*args) if fn is not None else default


class WorkerPool:
    """A few threads that run the controllers' queues, each controller on at most one thread at a time:
    far fewer threads wake per store event than with a thread per controller and kubelet."""

    BATCH = 32   # keys a controller may sync before it yields its thread to the next one

    def __init__(self, size: int, name: str = "kubesim-worker") -> None:
        self._ready: deque["Controller"] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10)

    def schedule(self, controller: "Controller") -> None:
        with self._cond:
            self._ready.append(controller)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                controller = self._ready.popleft()
            controller.drain(self.BATCH)


class Controller:
    """Subclasses set ``name`` and ``watches`` ({resource type: keys_for(event)}) and implement sync(key).
    ``dedicated`` controllers get a thread of their own (latency-critical ones)."""

    name = "controller"
    dedicated = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.config = ctx.config
        self.cache = ctx.cache
        self.events = ctx.events
        self._queue: deque[Hashable] = deque()
        self._pending: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._started = False
        self._scheduled = False      # on the pool's ready list or being drained
        self._pool = WorkerPool(1, f"kubesim-{self.name}") if self.dedicated else ctx.workers

    # ---- wiring ----------------------------------------------------------------------------------
    def watches(self) -> dict[str, Callable[[Event], Iterable[Hashable]]]:
        """Resource key -> function mapping a store event to the keys to sync (runs under the store lock)."""
        return {}

    def start(self) -> None:
        if self.dedicated:
            self._pool.start()
        with self._cond:
            self._started = True
        self.enqueue(_INITIAL)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
        if self.dedicated:
            self._pool.stop()

    # ---- queue -----------------------------------------------------------------------------------
    def enqueue(self, key: Hashable) -> None:
        with self._cond:
            if key in self._pending or self._stopped:
                return
            self._pending.add(key)
            self._queue.append(key)
            wake = self._started and not self._scheduled
            self._scheduled = self._scheduled or wake
        if wake:
            self._pool.schedule(self)

    def enqueue_all(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self.enqueue(key)

    def requeue_after(self, key: Hashable, seconds: float) -> None:
        self.ctx.timers.call_later(seconds, lambda: self.enqueue(key))

    def initial_keys(self) -> Iterable[Hashable]:
        """Keys to sync once at start (objects that existed before the controller did)."""
        return ()

    def sync(self, key: Hashable) -> None:
        raise NotImplementedError

    def drain(self, batch: int) -> None:
        """Sync up to ``batch`` queued keys on the calling pool thread, then give the thread back."""
        for _ in range(batch):
            with self._cond:
                if self._stopped or not self._queue:
                    self._scheduled = False
                    return
                key = self._queue.popleft()
                self._pending.discard(key)
            self._sync_safely(key)
        with self._cond:
            more = bool(self._queue) and not self._stopped
            self._scheduled = more
        if more:
            self._pool.schedule(self)

    def _sync_safely(self, key: Hashable) -> None:
        try:
            if key is _INITIAL:
                self.enqueue_all(self.initial_keys())
            else:
                self.sync(key)
            self._failures.pop(key, None)
        except errors.ApiError as e:
            # conflicts and races with deletions are expected: retry soon, with backoff
            self._retry(key, e if e.code not in (404, 409) else None)
        except Exception as e:
            self._retry(key, e)

    def _retry(self, key: Hashable, error: Exception | None) -> None:
        if error is not None:
            log.warning("%s: sync %s failed: %r", self.name, key, error, exc_info=not isinstance(error, errors.ApiError))
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self.requeue_after(key, min(0.005 * 2 ** failures, 5.0))


class EventRoutes:
    """Store events to the keys of the controllers that watch their resource (``Controller.watches``)."""

    def __init__(self, controllers: Iterable[Controller]) -> None:
        self._routes: dict[str, list] = defaultdict(list)
        for controller in controllers:
            for resource_key, keys_for in controller.watches().items():
                self._routes[resource_key].append((controller, keys_for))

    def dispatch(self, event: Event) -> None:
        """Only enqueue (listeners run under the store lock)."""
        for controller, keys_for in self._routes.get(event.resource.key, ()):
            try:
                for key in keys_for(event):
                    controller.enqueue(key)
            except Exception:   # a controller's bug must not fail the API write that triggered it
                log.exception("%s: mapping %s %s failed", controller.name, event.type, event.resource.key)


_INITIAL = ("initial-sync",)   # the first key of every controller: enqueue what already exists


def obj_key(obj: dict) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def same_keys(event: Event) -> list[tuple[str, str]]:
    """The object itself is the key (the usual case)."""
    return [obj_key(event.object)]


def same_keys_unless_status(event: Event) -> list[tuple[str, str]]:
    """The object itself, unless only its status changed: a workload controller's own status writes come
    back as such events, and nothing it acts on is in them. For objects with a generation (bumped by every
    spec change), the rest of the metadata tells."""
    if event.type == "MODIFIED" and "generation" in event.object["metadata"] \
            and _metadata_view(event.old) == _metadata_view(event.object):
        return []
    return [obj_key(event.object)]


def _metadata_view(obj: dict) -> dict:
    return {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")}
