"""Airflow UI plugin: a "Migration report" tab on every run of the k8smove DAGs (an external view) served by a
FastAPI app in the api-server, drawn from the run's ``report`` XCom (k8smove.report_page), so it works for any run
on any executor. Access is Airflow's own: the caller must be allowed to read the DAG's XComs.

Every Airflow process loads the plugins (the CLI, the scheduler, each task), but only the api-server serves the
page, so the app is built on its first request: importing Airflow's FastAPI security at load time cost every
process ~0.5 s and printed a third-party DeprecationWarning into `airflow dags trigger --output json`'s stdout."""
# No `from __future__ import annotations`: FastAPI resolves the route's annotations, which name local imports.
import json

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/k8smove"
REPORT_TASK = "report"


def stored_report(session, dag_id: str, run_id: str) -> dict | None:
    """The ``report`` task's return value for the run, straight from the metadata DB (any executor wrote it)."""
    from airflow.models.xcom import XComModel

    row = session.scalars(XComModel.get_many(run_id=run_id, key="return_value", task_ids=REPORT_TASK,
                                             dag_ids=dag_id, limit=1)).first()
    if row is None:
        return None
    value = row.value
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def build_reports_app():
    """The FastAPI app: ``GET /runs/<dag_id>/<run_id>``, the run's report page."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import requires_access_dag

    from k8smove.report_page import render

    app = FastAPI(title="k8smove migration reports")

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse,
             dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.XCOM))])
    def report_page(dag_id: str, run_id: str, session: SessionDep) -> HTMLResponse:
        report = stored_report(session, dag_id, run_id)
        if not isinstance(report, dict):
            raise HTTPException(404, f"{dag_id} run {run_id} has no migration report (yet): its report task has "
                                     "not finished, or the DAG is not one of k8smove's")
        return HTMLResponse(render(dag_id, run_id, report))

    return app


class ReportsApp:
    """The ASGI app Airflow mounts at URL_PREFIX; builds the FastAPI app on its first call."""

    def __init__(self):
        self.app = None

    async def __call__(self, scope, receive, send):
        if self.app is None:
            self.app = build_reports_app()
        await self.app(scope, receive, send)


reports_app = ReportsApp()


class K8sMoveReportsPlugin(AirflowPlugin):
    name = "k8smove_reports"
    fastapi_apps = [{"app": reports_app, "url_prefix": URL_PREFIX, "name": "k8smove migration reports"}]
    external_views = [{"name": "Migration report", "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
                       "destination": "dag_run", "url_route": "k8smove-report"}]
