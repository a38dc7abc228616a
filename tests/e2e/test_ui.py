"""`make ui` (scripts/ui.py): kubesim and a full local Airflow, the URL and login printed, the UI's login working
with them, the package's DAGs listed; the run's "Migration report" tab in a real browser (Debian's Chromium driven
by Playwright); and Ctrl-C stopping everything it started."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operators"))

from kubesim_release import unique_external_ip  # noqa: E402
from scripts.airflow_stack import free_port, processes_in_sessions  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
CHROMIUM = "/usr/bin/chromium"   # Debian's (make browser); Playwright never downloads one here


class Ui:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "scripts.ui", "--port", str(free_port())], cwd=ROOT,
                                        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.seen, self.login, self.url, self.token = [], None, None, None

    def wait_started(self) -> None:
        deadline = time.monotonic() + 300
        while self.login is None and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.seen.append(line)
            if match := re.match(r"Airflow UI\s+(\S+)", line):
                self.url = match.group(1)
            if match := re.match(r"Login\s+(\S+) / (\S+)", line):
                self.login = match.groups()
        assert self.url and self.login, "".join(self.seen)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def run(self, dag_id: str, conf: dict) -> str:
        run_id = f"ui__{time.time_ns()}"
        response = httpx.post(f"{self.url}api/v2/dags/{dag_id}/dagRuns", headers=self.headers(), timeout=30,
                              json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = httpx.get(f"{self.url}api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=self.headers(),
                              timeout=30).json()["state"]
            if state in ("success", "failed"):
                assert state == "success", (dag_id, run_id)
                return run_id
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id} did not finish")


@pytest.fixture(scope="module")
def ui():
    started = Ui()
    try:
        started.wait_started()
        yield started
    finally:
        if started.process.poll() is None:
            os.killpg(started.process.pid, signal.SIGKILL)
            started.process.wait()


def test_make_ui_prints_a_working_login(ui):
    url = ui.url
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":8080/"), url   # never the demo's port
    assert httpx.get(f"{url}api/v2/dags", timeout=30).status_code == 401   # a login is required
    token = httpx.post(f"{url}auth/token", json={"username": ui.login[0], "password": ui.login[1]}, timeout=30)
    assert token.status_code == 201, token.text
    ui.token = token.json()["access_token"]
    dags = httpx.get(f"{url}api/v2/dags", headers=ui.headers(), timeout=30)
    assert dags.status_code == 200, dags.text
    assert {d["dag_id"] for d in dags.json()["dags"]} >= {"deploy_app", "migrate_app", "node_maintenance",
                                                          "end_maintenance"}
    assert httpx.get(url, timeout=30).status_code == 200   # the UI itself
    # the migration report page answers only to a login that may read the DAG's XComs
    assert httpx.get(f"{url}k8smove/runs/migrate_app/r1", timeout=30).status_code in (401, 403)
    page = httpx.get(f"{url}k8smove/runs/migrate_app/r1", timeout=30, headers=ui.headers())
    assert page.status_code == 404 and "has no migration report" in page.text, page.text


def test_the_migration_report_tab_draws_the_run_in_a_real_browser(ui, tmp_path):
    from playwright.sync_api import sync_playwright

    assert ui.token, "the login test runs first"
    ui.run("deploy_app", {"node_label": {"demo": "node1"}, "external_ip": unique_external_ip(), "port": 8080})
    run_id = ui.run("migrate_app", {"node_label": {"demo": "node2"}})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(ui.url)
            page.get_by_label("Username").fill(ui.login[0])
            page.get_by_label("Password").fill(ui.login[1])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
            page.goto(f"{ui.url}dags/migrate_app/runs/{run_id}")
            page.get_by_role("link", name="Migration report").click()
            page.wait_for_url(re.compile(rf"/dags/migrate_app/runs/{run_id}/plugin/k8smove-report$"))
            report = page.frame_locator("iframe").locator("section.release")
            report.locator("svg.timeline").wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "migration-report.png"))
            assert report.locator(".outcome").inner_text() == "moved"
            steps = report.locator("rect.step")
            assert [steps.nth(i).get_attribute("data-task") for i in range(steps.count())] == [
                "preflight", "start_probe", "move", "stop_probe"]
            nodes = report.locator("rect.node")
            assert nodes.first.get_attribute("data-node") == "node1"
            assert nodes.last.get_attribute("data-node") == "node2"
            assert report.locator("rect.read-ok").count() >= 10 and report.locator("rect.read-failed").count() == 0
            assert "0 lost" in report.locator("table").inner_text()
        finally:
            browser.close()


def test_ctrl_c_stops_everything_it_started(ui):
    session = os.getsid(ui.process.pid)
    os.killpg(ui.process.pid, signal.SIGINT)                       # what Ctrl-C in a terminal sends
    rest, _ = ui.process.communicate(timeout=120)
    assert ui.process.returncode == 0, "".join(ui.seen) + rest
    assert "stopping Airflow and kubesim" in rest
    assert processes_in_sessions({session}) == []
