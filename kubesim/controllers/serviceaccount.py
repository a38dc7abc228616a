"""serviceaccount-controller: every active namespace has a "default" ServiceAccount."""
from __future__ import annotations

from .. import errors
from ..resources import NAMESPACES, SERVICEACCOUNTS
from ..store import DELETED, Event
from .base import Controller


class ServiceAccountController(Controller):
    name = "serviceaccount"

    def watches(self):
        return {NAMESPACES.key: lambda e: [] if e.type == DELETED else [e.object["metadata"]["name"]],
                SERVICEACCOUNTS.key: self._default_gone}

    def initial_keys(self):
        return [ns["metadata"]["name"] for ns in self.cache.list(NAMESPACES)]

    @staticmethod
    def _default_gone(event: Event):
        meta = event.object["metadata"]
        return [meta["namespace"]] if event.type == DELETED and meta["name"] == "default" else []

    def sync(self, namespace) -> None:
        ns = self.cache.get(NAMESPACES, None, namespace)
        if ns is None or ns["metadata"].get("deletionTimestamp"):
            return
        if self.cache.get(SERVICEACCOUNTS, namespace, "default") is None:
            try:
                self.store.create(SERVICEACCOUNTS, {"metadata": {"name": "default", "namespace": namespace}})
            except errors.ApiError as e:
                if e.code not in (403, 409):
                    raise
