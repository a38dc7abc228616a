"""What every k8smove operator shares: the provider's KubernetesHook owns the client."""
from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseOperator


class KubernetesOperator(BaseOperator):
    """Thin base: ``kubernetes_conn_id`` and a cached hook; subclasses' ``execute`` calls into k8smove."""

    def __init__(self, *, kubernetes_conn_id: str = "kubernetes_default", **kwargs) -> None:
        super().__init__(**kwargs)
        self.kubernetes_conn_id = kubernetes_conn_id

    @cached_property
    def hook(self):
        # Imported here: the provider and kubernetes client are too heavy for DAG parsing.
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def api(self):
        from k8smove.kube import retry_connection_errors

        return retry_connection_errors(self.hook.api_client)
