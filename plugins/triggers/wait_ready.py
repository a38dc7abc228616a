"""Deferrable rollout wait: holds no worker slot while pods start."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


async def wait_until_ready(kubernetes_conn_id: str, namespace: str, release: str | None, workloads: list[dict],
                           deadline: float) -> dict:
    """k8smove.watching.wait_for_rollout with the client of the provider's AsyncKubernetesHook."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

    from k8smove.watching import wait_for_rollout

    hook = AsyncKubernetesHook(conn_id=kubernetes_conn_id)
    async with hook.get_conn() as api:
        return await wait_for_rollout(api, namespace, release, workloads, max(deadline - time.time(), 0))


class WaitReadyTrigger(BaseTrigger):
    """Fires once every workload's rollout is complete with all pods Ready on matching nodes, or at the deadline.

    :param workloads: [{kind, name, node_selector}]
    :param deadline: epoch seconds (absolute, so a triggerer restart does not extend the wait)
    """

    def __init__(self, kubernetes_conn_id: str, namespace: str, release: str | None, workloads: list[dict],
                 deadline: float) -> None:
        super().__init__()
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.release = release
        self.workloads = workloads
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("triggers.wait_ready.WaitReadyTrigger", {
            "kubernetes_conn_id": self.kubernetes_conn_id, "namespace": self.namespace,
            "release": self.release, "workloads": self.workloads, "deadline": self.deadline})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(await wait_until_ready(**self.serialize()[1]))
