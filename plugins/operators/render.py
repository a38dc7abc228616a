from __future__ import annotations

from airflow.sdk import BaseOperator


class RenderTemplates(BaseOperator):
    """Render include/templates/{release,<component>}.yaml.j2 in the Jinja2 sandbox and validate the result.

    Returns the manifests (XCom, shown in the UI; templates carry no secret values, and Secrets are
    redacted in the log all the same).
    """

    template_fields = ("values", "components")
    ui_color = "#e8f8f5"

    def __init__(self, *, values: dict | str, components: list[str] | str = ("app", "db"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.values = values
        self.components = components

    def execute(self, context):
        from k8smove.render import render_manifests, to_yaml

        manifests = render_manifests(self.values, self.components)
        self.log.info("Rendered %d manifests:\n%s", len(manifests), to_yaml(manifests))
        return manifests
