"""The real kubectl against one cluster's kubeconfig, for the suites on the real control plane."""
from __future__ import annotations

import json
import os
import subprocess


def kubectl_runner(kubeconfig: str, home: str, default_timeout: float = 90):
    """kubectl (the one on PATH, as make test puts .venv/bin first) with this kubeconfig and its own HOME (its own
    discovery cache); check=True asserts exit 0; ``run.json(...)`` parses ``-o json``."""
    def run(*args: str, check: bool = True, input: str | None = None,
            timeout: float = default_timeout) -> subprocess.CompletedProcess:
        proc = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=input, capture_output=True,
                              text=True, timeout=timeout,
                              env={"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    run.json = lambda *args: json.loads(run(*args, "-o", "json").stdout)
    return run
