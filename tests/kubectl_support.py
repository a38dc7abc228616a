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


EXEC_POD = """
apiVersion: v1
kind: Pod
metadata: {name: shell, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'trap "exit 0" INT; echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done']
    env: [{name: GREETING, value: hello}]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes: [{name: scratch, emptyDir: {}}]
"""


def check_exec_and_logs(kubectl, kubeconfig: str) -> None:
    """`kubectl exec` (exit codes, stdin, the container's env and volumes), the Python client's exec stream and
    `kubectl logs` (--tail, -f with --limit-bytes) against one cluster: the same checks on kubesim's own API server
    and on the real one (through kubesim's kubelet API)."""
    from kubernetes import client, config
    from kubernetes.stream import stream

    kubectl("apply", "-f", "-", input=EXEC_POD)
    kubectl("wait", "--for=condition=Ready", "pod/shell", "--timeout=60s")
    failed = kubectl("exec", "shell", "--", "sh", "-c", "echo $GREETING from $(hostname); echo oops >&2; exit 3",
                     check=False)
    assert failed.returncode == 3, failed
    assert failed.stdout == "hello from shell\n" and failed.stderr.startswith("oops\n"), failed
    kubectl("exec", "-i", "shell", "--", "sh", "-c", "cat > /scratch/note", input="kept\n")
    assert kubectl("exec", "shell", "--", "cat", "/scratch/note").stdout == "kept\n"   # the pod's volume
    api = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    try:
        session = stream(api.connect_get_namespaced_pod_exec, "shell", "default", command=["sh", "-c", "exit 5"],
                         stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False)
        session.run_forever(timeout=20)
        assert session.returncode == 5
    finally:
        api.api_client.close()
    assert kubectl("logs", "shell", "--tail=1").stdout.startswith("tick ")
    assert kubectl("logs", "shell").stdout.startswith("started\ntick 1\n")
    followed = kubectl("logs", "-f", "shell", "--limit-bytes=30", timeout=30).stdout
    assert len(followed) == 30 and followed.startswith("started\ntick 1\n")
    missing = kubectl("exec", "shell", "-c", "nope", "--", "true", check=False)
    assert missing.returncode != 0 and "nope" in missing.stderr
    # an exec joins the container: its PID 1 is the container's command, and `kill -INT 1` stops it (how
    # KubernetesPodOperator ends its xcom sidecar)
    assert "while true" in kubectl("exec", "shell", "--", "cat", "/proc/1/cmdline").stdout
    kubectl("exec", "shell", "--", "kill", "-INT", "1")
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/shell", "--timeout=30s")
    kubectl("delete", "pod", "shell", "--wait=true")
