from __future__ import annotations

from operators.base import KubernetesOperator


class ApplyResources(KubernetesOperator):
    """Server-side apply (fieldManager k8smove) of rendered manifests.

    Pushes ``prior_state`` before the first write, so a rollback can restore whatever this run changed.
    With ``dry_run`` the API server validates and merges (dryRun=All) and the diff is logged; nothing
    is persisted. Returns [{object, result}].
    """

    template_fields = ("manifests", "dry_run")
    ui_color = "#d5f5e3"

    def __init__(self, *, manifests: list[dict] | str, dry_run: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.manifests = manifests
        self.dry_run = dry_run

    def execute(self, context):
        from airflow.sdk.log import mask_secret

        from k8smove.apply import apply_manifests, record_prior_state

        if not self.dry_run:
            context["ti"].xcom_push(key="prior_state", value=record_prior_state(self.api, self.manifests))
        return apply_manifests(self.api, self.manifests, dry_run=self.dry_run, on_secret=mask_secret)
