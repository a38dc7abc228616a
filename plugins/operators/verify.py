from __future__ import annotations

from airflow.sdk import BaseOperator

from operators.base import KubernetesOperator


class VerifySourceEmpty(KubernetesOperator):
    """Fail if a pod of a moved component is still on a node its old selector picks and the target does not.

    :param sources: component -> nodeSelector before the move (Preflight's ``sources`` XCom)
    """

    template_fields = ("namespace", "release", "sources", "node_label")
    ui_color = "#ebdef0"

    def __init__(self, *, namespace: str, release: str, sources: dict | str, node_label: dict | str,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.release = release
        self.sources = sources
        self.node_label = node_label

    def execute(self, context):
        from k8smove.verify import verify_source_empty

        verify_source_empty(self.api, self.namespace, self.release, self.sources, self.node_label)
        self.log.info("No pod of %s left on the source nodes (%s)", self.release, self.sources)


class VerifyEndpoint(BaseOperator):
    """GET ``url`` until it answers ``expected_status`` (and contains ``body_contains``), with backoff,
    within ``deadline_seconds``; logs and returns what answered."""

    template_fields = ("url", "expected_status", "body_contains", "deadline_seconds")
    ui_color = "#ebdef0"

    def __init__(self, *, url: str, expected_status: int = 200, body_contains: str | None = None,
                 deadline_seconds: float = 60, **kwargs) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.expected_status = expected_status
        self.body_contains = body_contains
        self.deadline_seconds = deadline_seconds

    def execute(self, context):
        from k8smove.verify import verify_endpoint

        answer = verify_endpoint(self.url, int(self.expected_status), self.body_contains,
                                 float(self.deadline_seconds))
        self.log.info("%s answered %s: %s", self.url, answer["status"], answer["body"])
        return answer
