from __future__ import annotations

from operators.base import KubernetesOperator


class LabelNodes(KubernetesOperator):
    """Set labels on named nodes, or remove them with a ``key-`` key; idempotent.

    :param label_nodes: node name -> {label: value} (``{"node1": {"demo": "node1", "old-": None}}``)
    """

    template_fields = ("label_nodes", "dry_run")
    ui_color = "#d6eaf8"

    def __init__(self, *, label_nodes: dict | str, dry_run: bool | str = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label_nodes = label_nodes
        self.dry_run = dry_run

    def execute(self, context):
        from k8smove.nodes import label_nodes

        changed = label_nodes(self.api, self.label_nodes, dry_run=bool(self.dry_run))
        self.log.info("Node labels %s: %s", "that would change (dry run)" if self.dry_run else "changed",
                      changed or "none (already labelled)")
        return changed
