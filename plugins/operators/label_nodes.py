from __future__ import annotations

from operators.base import KubernetesOperator


class LabelNodes(KubernetesOperator):
    """Set labels on named nodes, or remove them with a ``key-`` key; idempotent.

    :param label_nodes: node name -> {label: value} (``{"node1": {"demo": "node1", "old-": None}}``)
    """

    template_fields = ("label_nodes",)
    ui_color = "#d6eaf8"

    def __init__(self, *, label_nodes: dict | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label_nodes = label_nodes

    def execute(self, context):
        from k8smove.nodes import label_nodes

        changed = label_nodes(self.api, self.label_nodes)
        self.log.info("Node labels changed: %s", changed or "none (already labelled)")
        return changed
