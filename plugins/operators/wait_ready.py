from __future__ import annotations

import asyncio
import time

from airflow.sdk.exceptions import AirflowFailException

from operators.base import KubernetesOperator


# How long a rollout wait watches in the worker before it defers: most moves are done by then, which saves the
# triggerer's round trip and keeps them out of Airflow's deferral race (apache/airflow#71580, #72716).
WAIT_IN_WORKER_SECONDS = 15


def wait_in_worker_seconds() -> int:
    """``[k8smove] wait_in_worker_seconds`` (AIRFLOW__K8SMOVE__WAIT_IN_WORKER_SECONDS); 0 defers at once."""
    from airflow.sdk.configuration import conf

    return conf.getint("k8smove", "wait_in_worker_seconds", fallback=WAIT_IN_WORKER_SECONDS)


class RolloutWaitOperator(KubernetesOperator):
    """Waits for workloads' rollouts: in the worker for up to ``wait_in_worker_seconds``, then deferred to
    WaitReadyTrigger (a long wait holds no worker slot), or wholly in the worker (``deferrable=False``); the same
    watch code either way."""

    def __init__(self, *, timeout_seconds: int | str = 600, deferrable: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timeout_seconds = timeout_seconds
        self.deferrable = deferrable

    def wait_for(self, context, groups: list[dict], method_name: str = "execute_complete", kwargs: dict | None = None,
                 on_ready=None):
        """Wait for every group ({namespace, release, workloads}) in one deferral, then call ``method_name``.

        ``on_ready(group)``: the next step of one group (a release's commit), run on a thread of its own the moment
        that group's rollout completes while the worker waits, so no group waits for the slowest one; the groups it
        took are left out of the event (the caller carries their results in ``kwargs``). A worker's round in which
        it took a group is followed by another: the wait defers only after ``wait_in_worker_seconds`` without any.
        """
        from triggers.wait_ready import WaitReadyTrigger

        self.log.info("Waiting up to %ss for %s", self.timeout_seconds, groups)
        args = {"kubernetes_conn_id": self.kubernetes_conn_id, "groups": groups,
                "deadline": time.time() + int(self.timeout_seconds)}
        if not self.deferrable:
            event, _ = self._wait_in_worker(args, int(self.timeout_seconds), on_ready)
            return getattr(self, method_name)(context, event, **(kwargs or {}))
        in_worker = min(wait_in_worker_seconds(), int(self.timeout_seconds))
        if in_worker > 0:
            event, pending = self._wait_in_worker(args, in_worker, on_ready)
            # done, or the whole timeout spent here: this event (with the cluster's reasons) is the answer
            if not pending or time.time() >= args["deadline"]:
                self.log.info("Rollout wait ended in the worker (%s): not deferred", event["status"])
                return getattr(self, method_name)(context, event, **(kwargs or {}))
            self.log.info("Rollouts of %d of %d group(s) not complete after %ss in the worker without progress: "
                          "deferring", len(pending), len(groups), in_worker)
            args["groups"] = pending
        self.defer(trigger=WaitReadyTrigger(**args, carry=kwargs), method_name=method_name, kwargs=kwargs)

    def _wait_in_worker(self, args: dict, seconds: float, on_ready) -> tuple[dict, list[dict]]:
        """Watch in the worker in rounds of up to ``seconds`` (another round only when ``on_ready`` took a group in
        the last one); returns (the event of the groups not taken, the groups not complete)."""
        from concurrent.futures import ThreadPoolExecutor

        from k8smove.parallel import PARALLEL_RELEASES
        from triggers.wait_ready import wait_until_ready

        pending, taken = args["groups"], []
        with ThreadPoolExecutor(max_workers=PARALLEL_RELEASES) as pool:
            def ready(result: dict) -> None:   # in the event loop: hand the group over, never block
                taken.append(pool.submit(on_ready, result))
            while True:
                before, deadline = len(taken), min(time.time() + seconds, args["deadline"])
                # the cluster's reasons only at the wait's own deadline: a round's end is no verdict
                event = asyncio.run(wait_until_ready(**{**args, "groups": pending, "deadline": deadline},
                                                     on_ready=ready if on_ready else None,
                                                     diagnose_timeout=deadline >= args["deadline"]))
                results = event["groups"]
                pending = [g for g, r in zip(pending, results) if r["status"] != "success"]
                if on_ready is None:
                    break
                event = {"status": "timeout" if pending else "success",
                         "groups": [r for r in results if r["status"] != "success"]}
                if not pending or len(taken) == before or time.time() >= args["deadline"]:
                    break
        for future in taken:
            future.result()   # what on_ready raised fails the task (a retry: every step is safe to run again)
        return event, pending

    @staticmethod
    def carried(event: dict, name: str, given):
        """A resumed method's kwarg ``name``: as Airflow passed it, else as the trigger's event carried it
        (`airflow dags test` resumes a deferred task with the event alone)."""
        return given if given is not None else (event.get("carry") or {}).get(name)

    def not_complete(self, group: dict) -> str:
        """Why one group's rollout is not complete, in the cluster's words."""
        return (f"Rollout not complete after {self.timeout_seconds}s: {'; '.join(group['pending'])}. "
                f"Cluster reports: {'; '.join(group['reasons']) or 'nothing unusual'}")

    def execute_complete(self, context, event: dict):
        if failed := [self.not_complete(g) for g in event["groups"] if g["status"] != "success"]:
            raise AirflowFailException(" | ".join(failed))   # a retry would only wait as long again
        self.log.info("Rollout complete: every pod Running and Ready on its target nodes")
