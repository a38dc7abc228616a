"""Plain-Python logic behind the k8smove operators: no Airflow imports, testable on its own.

Modules import ``kubernetes``/``jinja2`` at the top; the operators import them inside ``execute`` so that
parsing a DAG file stays cheap.
"""

FIELD_MANAGER = "k8smove"
MANAGED_BY = "k8smove"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENTS = ("app", "db")


class K8sMoveError(Exception):
    """A problem a person must fix; the message names it (field, node, object)."""


def release_selector(release: str) -> str:
    """Label selector of the pods and workloads k8smove manages for one release."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={release}"
