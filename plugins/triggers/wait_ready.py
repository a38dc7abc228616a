"""Deferrable rollout wait: holds no worker slot while pods start."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


async def wait_until_ready(kubernetes_conn_id: str, groups: list[dict], deadline: float, on_ready=None,
                           diagnose_timeout: bool = True) -> dict:
    """k8smove.watching.wait_for_rollout for each group ({namespace, release, workloads}) at once, with the client
    of the provider's AsyncKubernetesHook. {"status": "success" when every group is, "groups": [each result]}.
    ``on_ready(result)``, if given, is called in the event loop (it must not block) the moment a group succeeds;
    ``diagnose_timeout`` False: ``deadline`` only ends a round of the wait, so no group lists Events for reasons."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

    from k8smove.watching import wait_for_rollout

    async def wait_one(api, group: dict) -> dict:
        result = await wait_for_rollout(api, group["namespace"], group["release"], group["workloads"],
                                        max(deadline - time.time(), 0), diagnose_timeout)
        if on_ready is not None and result["status"] == "success":
            on_ready({"namespace": group["namespace"], "release": group["release"], **result})
        return result

    hook = AsyncKubernetesHook(conn_id=kubernetes_conn_id)
    async with hook.get_conn() as api:
        results = await asyncio.gather(*(wait_one(api, group) for group in groups))
    return {"status": "success" if all(r["status"] == "success" for r in results) else "timeout",
            "groups": [{"namespace": g["namespace"], "release": g["release"], **r} for g, r in zip(groups, results)]}


class WaitReadyTrigger(BaseTrigger):
    """Fires once every workload's rollout is complete with all pods Ready on matching nodes, or at the deadline.

    :param groups: [{namespace, release (None: every workload of the namespace), workloads: [{kind, name,
        node_selector, avoid_nodes?}]}], one per release or namespace, all waited for in one deferral
    :param deadline: epoch seconds (absolute, so a triggerer restart does not extend the wait)
    :param carry: the resumed method's kwargs, echoed in the event as ``carry``: `airflow dags test` resumes a
        deferred task with the event alone, dropping the kwargs given to defer()
    """

    def __init__(self, kubernetes_conn_id: str, groups: list[dict], deadline: float, carry: dict | None = None) -> None:
        super().__init__()
        self.kubernetes_conn_id = kubernetes_conn_id
        self.groups = groups
        self.deadline = deadline
        self.carry = carry

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("triggers.wait_ready.WaitReadyTrigger", {
            "kubernetes_conn_id": self.kubernetes_conn_id, "groups": self.groups, "deadline": self.deadline,
            **({"carry": self.carry} if self.carry else {})})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        event = await wait_until_ready(self.kubernetes_conn_id, self.groups, self.deadline)
        yield TriggerEvent({**event, "carry": self.carry} if self.carry else event)
