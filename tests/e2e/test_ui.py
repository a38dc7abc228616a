"""`make ui` (scripts/ui.py): kubesim and a full local Airflow, the URL and login printed, the UI's login working
with them, the package's DAGs listed; in a real browser (Debian's Chromium driven by Playwright) deploy_app and
migrate_app triggered from their forms, followed to success, and the run's "Migration report" tab showing that
run's figures; bad input refused naming the field; the Airflow CLI's JSON output parseable; and Ctrl-C stopping
everything it started. Screenshots go to $K8SMOVE_TEST_ARTIFACTS (default test-artifacts/, git-ignored)."""
from __future__ import annotations

import json
import os
import re
import shlex
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
from scripts.ui import DAG_IDS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
CHROMIUM = "/usr/bin/chromium"   # Debian's (make browser); Playwright never downloads one here
ARTIFACTS = Path(os.environ.get("K8SMOVE_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "ui"
# What Airflow's CLI itself logs to stdout (not our code): its dag_command module's graphviz warning (3 lines) and
# `dags trigger`'s "creating dag run"
AIRFLOW_OWN_STDOUT = re.compile(r"^\S+ \[warning\s*\] Could not import graphviz\..*?lineno=\d+\n"
                                r"|^\S+ \[info\s*\] creating dag run [^\n]*\n", re.MULTILINE | re.DOTALL)


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


class Ui:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "scripts.ui", "--port", str(free_port())], cwd=ROOT,
                                        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.seen, self.login, self.url, self.token = [], None, None, None
        self.kubeconfig = self.cli_env = None

    def wait_started(self) -> None:
        deadline = time.monotonic() + 300
        while self.cli_env is None and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.seen.append(line)
            if match := re.match(r"Airflow UI\s+(\S+)", line):
                self.url = match.group(1)
            if match := re.match(r"Login\s+(\S+) / (\S+)", line):
                self.login = match.groups()
            if match := re.match(r"kubectl\s+kubectl --kubeconfig (\S+)", line):
                self.kubeconfig = match.group(1)
            if match := re.match(r"CLI\s+\. (\S+) && airflow", line):
                self.cli_env = match.group(1)
        assert self.url and self.login and self.kubeconfig and self.cli_env, "".join(self.seen)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str) -> dict:
        response = httpx.get(f"{self.url}api/v2/{path}", headers=self.headers(), timeout=30)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    def wait_for(self, dag_id: str, run_id: str, timeout: float = 180) -> str:
        """The run's final state, followed through the REST API (the run may not exist yet: the form just sent it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=self.headers(),
                                 timeout=30)
            if response.status_code == 200 and response.json()["state"] in ("success", "failed"):
                return response.json()["state"]
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


@pytest.fixture(scope="module")
def browser_page(ui):
    """A Chromium page logged in to make ui's Airflow with the printed login, allowed to paste."""
    from playwright.sync_api import sync_playwright

    assert ui.token, "the login test runs first"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=ui.url.rstrip("/"))
            page = context.new_page()
            page.goto(ui.url)
            page.get_by_label("Username").fill(ui.login[0])
            page.get_by_label("Password").fill(ui.login[1])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
            yield page
        finally:
            browser.close()


def open_trigger_form(page, url: str, dag_id: str):
    page.goto(f"{url}dags/{dag_id}")
    page.get_by_role("button", name=re.compile("Trigger")).first.click()
    form = page.get_by_role("dialog")
    form.locator("#element_node_label .view-lines").wait_for()   # the JSON editors have loaded
    return form


def paste_json(page, editor, text: str) -> None:
    """How a user enters a JSON param: select all, paste (typed, the editor's auto-closing quotes and braces
    turn {"demo": "node1"} into {"demo": ""}node1"} — the DAG docs tell users to paste)."""
    editor.locator(".view-lines").click()
    page.keyboard.press("Control+A")
    page.evaluate("text => navigator.clipboard.writeText(text)", text)
    page.keyboard.press("Control+V")


def advanced(form):
    """The form's Advanced Options section (Run ID, Configuration JSON), opened."""
    if not form.locator("input[name=dagRunId]").is_visible():
        form.get_by_role("button", name="Advanced Options").click()
    return form.get_by_text("Configuration JSON").locator("xpath=..")


def set_run_id(form, run_id: str) -> None:
    advanced(form)
    form.locator("input[name=dagRunId]").fill(run_id)


def trigger(page, form, dag_id: str, run_id: str) -> None:
    """Click Trigger: Airflow accepts the run, closes the form and opens the run's page."""
    form.get_by_role("button", name="Trigger").click()
    page.wait_for_url(re.compile(rf"/dags/{dag_id}/runs/{run_id}$"), timeout=30_000)


def open_report_tab(page, url: str, dag_id: str, run_id: str):
    """The run's page, then its "Migration report" tab; the report's section inside the tab's iframe."""
    page.goto(f"{url}dags/{dag_id}/runs/{run_id}")
    page.get_by_role("link", name="Migration report").click()
    page.wait_for_url(re.compile(rf"/dags/{dag_id}/runs/{run_id}/plugin/k8smove-report$"))
    report = page.frame_locator("iframe").locator("section.release")
    report.locator(".outcome").wait_for(timeout=30_000)
    return report


def report_rows(report) -> dict[str, str]:
    """The report's table as {row heading: text}."""
    rows = report.locator("table tr")
    return {rows.nth(i).locator("th").inner_text(): rows.nth(i).locator("td").inner_text()
            for i in range(rows.count())}


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


def test_deploy_and_migrate_from_the_trigger_form(ui, browser_page):
    """A user's path: the trigger form (JSON params pasted, fields typed, a run id under Advanced Options), the
    runs followed to success, the migration's "Migration report" tab showing that run's own figures."""
    page, external_ip = browser_page, unique_external_ip()
    deploy_run, migrate_run = f"form_deploy_{time.time_ns()}", f"form_migrate_{time.time_ns()}"
    form = open_trigger_form(page, ui.url, "deploy_app")
    paste_json(page, form.locator("#element_node_label"), '{"demo": "node1"}')
    form.locator("#element_external_ip").fill(external_ip)
    form.locator("#element_node_label").scroll_into_view_if_needed()
    page.screenshot(path=str(artifact("trigger-form-deploy_app.png")))
    set_run_id(form, deploy_run)   # Advanced Options: opening it folds the params away
    page.screenshot(path=str(artifact("trigger-form-deploy_app-advanced.png")))
    trigger(page, form, "deploy_app", deploy_run)
    assert ui.wait_for("deploy_app", deploy_run) == "success"
    run = ui.get(f"dags/deploy_app/dagRuns/{deploy_run}")
    assert (run["conf"]["node_label"], run["conf"]["external_ip"]) == ({"demo": "node1"}, external_ip), run["conf"]

    form = open_trigger_form(page, ui.url, "migrate_app")
    paste_json(page, form.locator("#element_node_label"), '{"demo": "node2"}')
    set_run_id(form, migrate_run)
    trigger(page, form, "migrate_app", migrate_run)
    assert ui.wait_for("migrate_app", migrate_run) == "success"
    page.get_by_text("Success", exact=True).first.wait_for(timeout=30_000)   # the open run page follows by itself
    assert ui.get(f"dags/migrate_app/dagRuns/{migrate_run}")["conf"]["node_label"] == {"demo": "node2"}

    stored = ui.get(f"dags/migrate_app/dagRuns/{migrate_run}/taskInstances/report/xcomEntries/return_value")["value"]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    probe, writes, db = stored["probe"], stored["probe"]["writes"], stored["db"]
    report = open_report_tab(page, ui.url, "migrate_app", migrate_run)
    page.screenshot(path=str(artifact("migration-report.png")), full_page=True)
    assert page.frame_locator("iframe").locator("h1").inner_text() == f"migrate_app · {migrate_run}"
    assert report.locator(".outcome").inner_text() == stored["outcome"] == "moved"
    steps = report.locator("rect.step")
    assert [steps.nth(i).get_attribute("data-task") for i in range(steps.count())] == [
        "preflight", "start_probe", "move", "stop_probe"]
    nodes = report.locator("rect.node")
    assert nodes.first.get_attribute("data-node") == "node1" and nodes.last.get_attribute("data-node") == "node2"
    assert report.locator("rect.read-ok").count() >= 10 and report.locator("rect.read-failed").count() == 0
    table = report_rows(report)
    assert table["requests"].startswith(f"{probe['sent']} sent, {probe['failed']} failed, longest gap "
                                        f"{probe['max_gap_ms']} ms"), (table, probe)
    assert table["writes"].startswith(f"{writes['sent']} sent, {writes['failed']} not acknowledged"), table
    assert table["rows"] == f"{db['rows_acknowledged']} acknowledged, {db['rows_present']} present, 0 lost", table
    assert probe["sent"] >= 20 and probe["failed"] == 0 and db["rows_acknowledged"] > 0


def test_bad_input_in_the_form_is_refused_naming_the_field(ui, browser_page):
    """What the user sees: Airflow's validation of the params, shown in the form, names the conf key and starts
    no run; a value only the cluster refuses (a loopback external_ip) fails the run at preflight, before any
    write, and its Migration report tab says why, naming the key."""
    page = browser_page
    runs_before = ui.get("dags/deploy_app/dagRuns")["total_entries"]
    refusals = {
        "external_ip": lambda form: form.locator("#element_external_ip").fill("10.192.0.300"),
        "node_label": lambda form: paste_json(page, form.locator("#element_node_label"), '{"demo": "node 1"}'),
        # a number typed out of range is clamped by the form (its description says so); the conf JSON is not
        "port": lambda form: paste_json(page, advanced(form).locator(".monaco-editor"),
                                        '{"node_label": {"demo": "node1"}, "port": 99999}'),
    }
    for key, enter in refusals.items():
        form = open_trigger_form(page, ui.url, "deploy_app")
        paste_json(page, form.locator("#element_node_label"), '{"demo": "node1"}')
        enter(form)
        form.get_by_role("button", name="Trigger").click()
        message = form.get_by_text(f"Invalid input for param {key}:")
        message.wait_for(timeout=30_000)
        page.screenshot(path=str(artifact(f"refused-{key}.png")))
        assert form.is_visible()   # the form stays open with what was typed
    assert ui.get("dags/deploy_app/dagRuns")["total_entries"] == runs_before   # no run started

    form = open_trigger_form(page, ui.url, "deploy_app")
    port = form.locator("input[name=element_port]")
    port.fill("99999")
    port.blur()
    assert port.input_value() == "65535"   # the clamp the port's description warns of
    assert "the form clamps a number out of range" in form.inner_text()

    refused_run, release = f"form_refused_{time.time_ns()}", "refusedui"
    form.locator("#element_release").fill(release)
    paste_json(page, form.locator("#element_node_label"), '{"demo": "node1"}')
    form.locator("#element_external_ip").fill("127.0.0.1")
    port.fill("8080")
    set_run_id(form, refused_run)
    trigger(page, form, "deploy_app", refused_run)
    assert ui.wait_for("deploy_app", refused_run) == "failed"
    states = {t["task_id"]: t["state"] for t in
              ui.get(f"dags/deploy_app/dagRuns/{refused_run}/taskInstances")["task_instances"]}
    assert states["preflight"] == "failed" and states["label_nodes"] == states["move"] == "upstream_failed", states
    report = open_report_tab(page, ui.url, "deploy_app", refused_run)
    page.screenshot(path=str(artifact("refused-at-preflight.png")), full_page=True)
    assert report.locator(".outcome").inner_text() == "refused"
    assert report.locator(".reason").inner_text().startswith("K8sMoveError: external_ip 127.0.0.1: a loopback address")
    written = subprocess.run(["kubectl", "--kubeconfig", ui.kubeconfig, "get", "deploy,sts,svc,pvc,configmap,secret,"
                              "lease", "--all-namespaces", "-o", "name"], capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    assert [name for name in written.stdout.split() if release in name] == []   # nothing of it in the cluster


def test_airflow_cli_json_output_parses(ui):
    """`airflow ... --output json` against make ui's stack (the CLI line it prints): what our plugins and DAGs
    load prints nothing on stdout, so with Airflow's own two lines silenced as the README says, stdout is JSON."""
    def airflow(*args: str, **env: str) -> subprocess.CompletedProcess:
        """As a user types it: make ui's CLI line, then `NAME=value ... airflow <args>`."""
        assigned = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        command = f". {shlex.quote(ui.cli_env)} && {assigned} airflow {shlex.join(args)}"
        return subprocess.run(["bash", "-c", command], text=True, timeout=120, capture_output=True, cwd=ROOT)

    quiet = {"PYTHONWARNINGS": "ignore", "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}   # the README's workaround
    listed = airflow("dags", "list", "--output", "json", **quiet)
    assert listed.returncode == 0, listed.stderr
    assert {d["dag_id"] for d in json.loads(listed.stdout)} == set(DAG_IDS), listed.stdout
    conf = {"node_label": {"demo": "node2"}, "dry_run": True}
    triggered = airflow("dags", "trigger", "migrate_app", "--conf", json.dumps(conf), "--output", "json", **quiet)
    assert triggered.returncode == 0, triggered.stderr
    [run] = json.loads(triggered.stdout)
    assert run["dag_id"] == "migrate_app" and run["conf"]["node_label"] == {"demo": "node2"}, run
    # Without the workaround, stdout is Airflow's own log lines (its CLI logs to stdout), then the JSON
    loud = airflow("dags", "trigger", "migrate_app", "--conf", json.dumps(conf), "--output", "json")
    assert loud.returncode == 0, loud.stderr
    [loud_run] = json.loads(AIRFLOW_OWN_STDOUT.sub("", loud.stdout))
    # A refused conf: exit 1, the param named on stderr, nothing on stdout for a script to mistake for a run
    refused = airflow("dags", "trigger", "migrate_app", "--conf", '{"node_label": {"demo": "node 2"}}',
                      "--output", "json", **quiet)
    assert (refused.returncode, refused.stdout) == (1, ""), refused
    assert "ParamValidationError: Invalid input for param node_label: 'node 2' does not match" in refused.stderr
    assert ui.wait_for("migrate_app", run["dag_run_id"]) == ui.wait_for("migrate_app", loud_run["dag_run_id"]) \
        == "success"


def test_ctrl_c_stops_everything_it_started(ui):
    session = os.getsid(ui.process.pid)
    os.killpg(ui.process.pid, signal.SIGINT)                       # what Ctrl-C in a terminal sends
    rest, _ = ui.process.communicate(timeout=120)
    assert ui.process.returncode == 0, "".join(ui.seen) + rest
    assert "stopping Airflow and kubesim" in rest
    assert processes_in_sessions({session}) == []
