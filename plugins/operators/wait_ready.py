from __future__ import annotations

import asyncio
import time

from airflow.sdk.exceptions import AirflowException

from operators.base import KubernetesOperator


class RolloutWaitOperator(KubernetesOperator):
    """Waits for workloads' rollouts: deferred to WaitReadyTrigger (default: the wait holds no worker slot),
    or in the worker with the same watch code (``deferrable=False``)."""

    def __init__(self, *, namespace: str, release: str | None, timeout_seconds: int | str = 600,
                 deferrable: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.release = release
        self.timeout_seconds = timeout_seconds
        self.deferrable = deferrable

    def wait_for(self, workloads: list[dict]):
        from triggers.wait_ready import WaitReadyTrigger, wait_until_ready

        self.log.info("Waiting up to %ss for %s", self.timeout_seconds, workloads)
        args = {"kubernetes_conn_id": self.kubernetes_conn_id, "namespace": self.namespace,
                "release": self.release, "workloads": workloads,
                "deadline": time.time() + int(self.timeout_seconds)}
        if self.deferrable:
            self.defer(trigger=WaitReadyTrigger(**args), method_name="execute_complete")
        return self.execute_complete(None, asyncio.run(wait_until_ready(**args)))

    def execute_complete(self, context, event: dict):
        if event["status"] != "success":
            raise AirflowException(
                f"Rollout not complete after {self.timeout_seconds}s: {'; '.join(event['pending'])}. "
                f"Cluster reports: {'; '.join(event['reasons']) or 'nothing unusual'}")
        self.log.info("Rollout complete: every pod Running and Ready on its target nodes")


class WaitReady(RolloutWaitOperator):
    """Wait until each Deployment/StatefulSet in ``manifests`` is rolled out with every pod Running and
    Ready on a node matching its nodeSelector. Event-driven (watch), deferrable; on timeout fails with the
    cluster's reasons (FailedScheduling, image pull errors, crash loops, readiness failures).
    """

    template_fields = ("namespace", "release", "manifests", "timeout_seconds")
    ui_color = "#fcf3cf"

    def __init__(self, *, manifests: list[dict] | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.manifests = manifests

    def execute(self, context):
        from k8smove.rollout import workloads_in

        return self.wait_for(workloads_in(self.manifests))
