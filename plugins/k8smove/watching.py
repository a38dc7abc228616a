"""Event-driven rollout wait over kubernetes_asyncio: list, then watch from that resourceVersion.

A watch that ends (server timeout, dropped connection) resumes from the last resourceVersion seen; a
410 Gone relists. Every event re-evaluates the RolloutTracker at once, so nothing waits on a timer.
"""
from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from k8smove import release_selector
from k8smove.rollout import RolloutTracker, diagnose

log = logging.getLogger(__name__)

WATCH_SECONDS = 240            # server-side watch timeout; the watch is resumed after it
RECONNECT_DELAY_SECONDS = 0.2  # after a dropped connection, before resuming from the same resourceVersion
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


class _Feed:
    """One resource kind: keeps ``tracker`` up to date and sets ``changed`` after every event."""

    def __init__(self, kind, list_fn, args, label_selector, tracker: RolloutTracker, changed: asyncio.Event):
        self.kind, self.list_fn, self.args, self.label_selector = kind, list_fn, args, label_selector
        self.tracker, self.changed = tracker, changed

    def _kwargs(self, **extra) -> dict:
        return {"label_selector": self.label_selector, **extra} if self.label_selector else extra

    async def _request(self, **kwargs):
        """The raw response (not yet read); raises ApiException for an error status like a preloaded call."""
        response = await self.list_fn(*self.args, **self._kwargs(_preload_content=False, **kwargs))
        if response.status >= 400:
            body = await response.read()
            response.release()
            raise ApiException(status=response.status, reason=body.decode(errors="replace")[:500])
        return response

    async def _relist(self) -> str:
        response = await self._request()
        listing = json.loads(await response.read())
        self.tracker.forget(self.kind)
        for item in listing["items"]:
            self.tracker.observe(self.kind, "ADDED", item)
        self.changed.set()
        return listing["metadata"]["resourceVersion"]

    async def follow(self) -> None:
        try:
            await self._follow()
        finally:
            self.changed.set()            # wake the waiter, which re-raises a watch's fatal error

    async def _follow(self) -> None:
        resource_version = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._relist()
                response = await self._request(
                    watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=WATCH_SECONDS + 10))
                async with response:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            if obj.get("code") == 410:      # too old: start again from a fresh list
                                resource_version = None
                                break
                            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                        resource_version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.tracker.observe(self.kind, event["type"], obj)
                            self.changed.set()
            except ApiException as err:
                if err.status == 410:
                    resource_version = None
                elif err.status in TRANSIENT_STATUSES:
                    await self._pause(f"API error {err.status}", resource_version)
                else:
                    raise
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                await self._pause(repr(err), resource_version)

    async def _pause(self, why: str, resource_version: str | None) -> None:
        log.info("%s watch interrupted (%s); resuming from resourceVersion %s", self.kind, why, resource_version)
        await asyncio.sleep(RECONNECT_DELAY_SECONDS)


async def wait_for_rollout(api: ApiClient, namespace: str, release: str | None, workloads: list[dict],
                           timeout_seconds: float, diagnose_timeout: bool = True) -> dict:
    """{"status": "success"} once done, else {"status": "timeout", "pending": [...], "reasons": [...]}.

    ``release`` None watches every workload and pod of the namespace (workloads k8smove did not deploy).
    ``diagnose_timeout`` False: a timeout that only ends a round of waiting (the wait goes on) lists no Events
    for its reasons: many releases' rounds ending at once would each list every Event of the namespace.
    """
    tracker = RolloutTracker(workloads)
    changed = asyncio.Event()
    core, apps = CoreV1Api(api), AppsV1Api(api)
    selector = release_selector(release) if release else None
    feeds = [
        _Feed("Node", core.list_node, (), None, tracker, changed),
        _Feed("Pod", core.list_namespaced_pod, (namespace,), selector, tracker, changed),
        _Feed("Deployment", apps.list_namespaced_deployment, (namespace,), selector, tracker, changed),
        _Feed("StatefulSet", apps.list_namespaced_stateful_set, (namespace,), selector, tracker, changed),
    ]
    tasks = [asyncio.create_task(feed.follow()) for feed in feeds]
    try:
        async with asyncio.timeout(timeout_seconds):
            while True:
                await changed.wait()
                changed.clear()
                if failed := [t for t in tasks if t.done()]:
                    failed[0].result()                       # a watch died of a non-retryable error
                if not tracker.pending():
                    return {"status": "success"}
    except TimeoutError:
        if not diagnose_timeout:
            return {"status": "timeout", "pending": tracker.pending(), "reasons": []}
        pods = [p for w in workloads for p in tracker.pods_of(w)]
        events = await core.list_namespaced_event(namespace, _preload_content=False)
        reasons = diagnose(pods, json.loads(await events.read())["items"])
        return {"status": "timeout", "pending": tracker.pending(), "reasons": reasons}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
