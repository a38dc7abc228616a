"""`make demo` as a user runs it (the script behind it), checked through the JSON report it leaves."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubesim.addresses import external_address
from scripts.local_airflow import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("control_plane", ["kubesim", "real"])
def test_demo_deploys_migrates_and_reports(tmp_path, control_plane):
    """On kubesim's own API server (the default) and on the real kube-apiserver, controllers and scheduler with
    kubesim's nodes: the same DAGs, the same report (the real API server refuses a loopback external IP)."""
    extra = ["--control-plane", "real", "--external-ip", external_address(9)] if control_plane == "real" else []
    result = subprocess.run([sys.executable, "-m", "scripts.demo", "--report-dir", str(tmp_path), *extra], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:]
    report = json.loads((tmp_path / "demo-report.json").read_text())
    assert report["deploy"]["state"] == "success"
    migrate = report["migrate"]
    assert migrate["state"] == "success" and migrate["outcome"] == "moved"
    assert set(migrate["pods_before"]) == {"node1"} and len(migrate["pods_before"]["node1"]) == 2
    assert set(migrate["pods_after"]) == {"node2"} and len(migrate["pods_after"]["node2"]) == 2
    assert migrate["probe"]["sent"] >= 20 and migrate["probe"]["failed"] == 0
    assert migrate["probe"]["max_gap_ms"] < 1000
    assert migrate["db"]["rows_acknowledged"] > 0 and migrate["db"]["rows_lost"] == 0
    # the DB moved by switchover (issue 11): no write went unacknowledged, writes paused only for the switch
    writes = migrate["probe"]["writes"]
    assert writes["failed"] == 0 and writes["max_stall_ms"] < 5000, writes
    assert migrate["db_switchover"]["write_pause_ms"] < 5000, migrate["db_switchover"]
    assert migrate["retired_claims"] == {"removed": ["demo-db"]}
    assert "longest with none acknowledged" in result.stdout
    assert migrate["duration_s"] > 0
    assert "k8smove demo report" in result.stdout and str(tmp_path / "demo-report.json") in result.stdout
