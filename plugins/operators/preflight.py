from __future__ import annotations

from operators.base import KubernetesOperator


class Preflight(KubernetesOperator):
    """Check the conf against the cluster before anything is written; push the plan for later tasks.

    A deploy passes ``settings`` (the render values besides namespace/release/node_label) and
    ``label_nodes``; a migration passes neither, and the release's recorded values and current placement
    are read from the cluster. XCom keys: ``values`` (render values), ``sources`` (component -> current
    nodeSelector), ``service_url``.

    :param node_label: target node selector
    :param components: components to place (default both)
    """

    template_fields = ("namespace", "release", "node_label", "components", "settings", "label_nodes")
    ui_color = "#fdebd0"

    def __init__(self, *, namespace: str, release: str, node_label: dict | str,
                 components: list[str] | str = ("app", "db"), settings: dict | str | None = None,
                 label_nodes: dict | str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.release = release
        self.node_label = node_label
        self.components = components
        self.settings = settings
        self.label_nodes = label_nodes

    def execute(self, context):
        from k8smove.preflight import check_conf_keys, preflight, recorded_release

        # The DAG's declared params: context["params"] also holds whatever keys the conf added.
        check_conf_keys(context["dag_run"].conf or {}, self.dag.params.keys())
        if self.settings is None:
            recorded, sources = recorded_release(self.api, self.namespace, self.release, self.components)
        else:
            recorded, sources = self.settings, {}
        values = {**recorded, "namespace": self.namespace, "release": self.release, "node_label": self.node_label}
        plan = preflight(self.api, values, self.components, label_nodes=self.label_nodes, sources=sources)
        self.log.info("Target nodes %s; current placement %s", plan["target_nodes"], sources or "none (deploy)")
        ti = context["ti"]
        ti.xcom_push(key="values", value=values)
        ti.xcom_push(key="sources", value=sources)
        ti.xcom_push(key="service_url", value=f"http://{values['external_ip']}:{values['port']}/")
        return plan
