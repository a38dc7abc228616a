"""The real kubectl against one cluster's kubeconfig, for the suites on the real control plane."""
from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest


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
    # a long-running kubectl (port-forward): stdout and stderr as pipes, the caller ends it
    run.popen = lambda *args: subprocess.Popen(
        ["kubectl", "--kubeconfig", kubeconfig, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return run


def service_account_kubeconfig(admin_kubeconfig: str, token: str, path: Path) -> str:
    """The admin kubeconfig's server and CA, authenticating with ``token`` instead of a client certificate."""
    admin = json.loads(Path(admin_kubeconfig).read_text())   # kubesim.controlplane writes it as JSON
    [cluster] = admin["clusters"]
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": cluster["name"], "cluster": {
                  "server": cluster["cluster"]["server"],
                  "certificate-authority-data": cluster["cluster"]["certificate-authority-data"]}}],
              "users": [{"name": "k8smove", "user": {"token": token}}],
              "contexts": [{"name": "k8smove", "context": {"cluster": cluster["name"], "user": "k8smove"}}],
              "current-context": "k8smove"}
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return str(path)


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


LOGS_POD = """
apiVersion: v1
kind: Pod
metadata: {name: logs, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: OnFailure
  containers:
  - name: crash
    image: busybox:1.36
    command: [sh, -c, 'if [ -e /scratch/ran ]; then echo second run; i=0; while true; do i=$((i+1)); echo tick $i;
              sleep 0.2; done; else touch /scratch/ran; echo first run; echo to stderr >&2; exit 1; fi']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  - name: side
    image: busybox:1.36
    command: [sh, -c, 'echo one; sleep 4; echo two']
  volumes: [{name: scratch, emptyDir: {}}]
"""
STAMPED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$")


def rfc3339(seconds: float) -> str:
    """A time as the kubelet stamps log lines (UTC, nine fractional digits): comparable as a string."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(seconds))) + f".{int(seconds % 1 * 1e9):09d}Z"


def stamped_lines(text: str) -> list[tuple[str, str]]:
    """(timestamp, text) of each line `kubectl logs --timestamps` printed; every line must carry one."""
    matches = [STAMPED.match(line) for line in text.splitlines()]
    assert matches and all(matches), text
    return [m.groups() for m in matches]


def check_log_options(kubectl) -> None:
    """`kubectl logs` options against one cluster, the same on kubesim's own API server and on the real one:
    per-container follow ending with its container, --previous after a restart (and the kubelet's 400 without
    one), --timestamps, --tail, --since-time and --since."""
    kubectl("apply", "-f", "-", input=LOGS_POD)

    def container(name: str) -> dict:
        pod = kubectl.json("get", "pod", "logs")
        return next((cs for cs in (pod.get("status") or {}).get("containerStatuses") or [] if cs["name"] == name), {})

    def wait_until(condition, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (found := condition()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)
        return found

    wait_until(lambda: "running" in container("side")["state"], "side to run")
    # a follow of one container ends when that container ends, while the pod's other container runs on
    assert kubectl("logs", "-f", "logs", "-c", "side", timeout=30).stdout == "one\ntwo\n"
    assert "running" in container("crash")["state"]
    assert kubectl("logs", "logs", "-c", "side").stdout == "one\ntwo\n"   # terminated: its last instance
    no_previous = kubectl("logs", "logs", "-c", "side", "--previous", check=False)
    assert no_previous.returncode == 1 and no_previous.stderr == \
        'Error from server (BadRequest): previous terminated container "side" in pod "logs" not found\n'

    restarted = wait_until(lambda: (cs := container("crash")).get("restartCount") == 1 and "running" in cs["state"]
                           and cs, "the crash container's restart")
    assert restarted["lastState"]["terminated"]["exitCode"] == 1
    assert restarted["lastState"]["terminated"]["containerID"] != restarted["containerID"]
    assert kubectl("logs", "logs", "-c", "crash", "--previous").stdout == "first run\nto stderr\n"
    assert kubectl("logs", "logs", "-c", "crash").stdout.startswith("second run\ntick 1\n")

    tail = stamped_lines(kubectl("logs", "logs", "-c", "crash", "--timestamps", "--tail=3").stdout)
    assert len(tail) == 3 and all(text.startswith("tick ") for _, text in tail)
    first_stamp = stamped_lines(kubectl("logs", "logs", "-c", "crash", "--timestamps", "--tail=-1").stdout)[0][0]
    started = calendar.timegm(time.strptime(first_stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    # --since-time goes to the server in whole seconds: every line stamped at or after that second
    cutoff = rfc3339(int(started) + 2)
    wait_until(lambda: time.time() > started + 7, "seven seconds of the second run")
    everything = stamped_lines(kubectl("logs", "logs", "-c", "crash", "--timestamps").stdout)
    expected = [line for line in everything if line[0] >= cutoff]
    since_time = stamped_lines(kubectl("logs", "logs", "-c", "crash", "--timestamps",
                                       f"--since-time={cutoff[:19]}Z").stdout)
    assert everything[0] not in since_time and since_time[:len(expected)] == expected, (cutoff, since_time[:3])
    before = rfc3339(time.time() - 5)
    since = stamped_lines(kubectl("logs", "logs", "-c", "crash", "--timestamps", "--since=5s").stdout)
    assert since[0][0] >= before and len(since) >= 10 and everything[0] not in since, (before, since[:2])
    kubectl("delete", "pod", "logs", "--wait=true")


def check_unrunnable_image(kubectl) -> None:
    """An image kubesim's image table cannot run is never stood in for: its pod stays Pending, the container waits
    in ErrImagePull then ImagePullBackOff, and the kubelet's events say it is not runnable and what is."""
    image = "registry.example/no-such/server:1"
    kubectl("run", "unrunnable", f"--image={image}", "--restart=Never")

    def waiting() -> dict:
        statuses = (kubectl.json("get", "pod", "unrunnable").get("status") or {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting") or {}

    deadline = time.monotonic() + 60
    while waiting().get("reason") != "ImagePullBackOff":
        assert time.monotonic() < deadline, waiting()
        time.sleep(0.3)
    assert waiting()["message"] == f'Back-off pulling image "{image}"'
    assert kubectl.json("get", "pod", "unrunnable")["status"]["phase"] == "Pending"
    events = kubectl.json("get", "events", "--field-selector", "involvedObject.name=unrunnable")["items"]
    said = {(e["type"], e["reason"], e["message"]) for e in events}
    failure = next(m for t, r, m in said if (t, r) == ("Warning", "Failed") and m.startswith("Failed to pull image"))
    assert failure.startswith(f'Failed to pull image "{image}": image "{image}" is not runnable on kubesim: no entry '
                              f'of its image table matches it (runnable here: kubesim-demo-app, '), failure
    assert all(name in failure for name in ("postgres", "busybox", "python", "nginx")), failure
    assert {("Warning", "Failed", "Error: ErrImagePull"), ("Normal", "BackOff", f'Back-off pulling image "{image}"'),
            ("Warning", "Failed", "Error: ImagePullBackOff")} <= said, said
    logs = kubectl("logs", "unrunnable", check=False)
    # the kubelet's words for either state: the pull is retried after each back-off, ErrImagePull again
    assert logs.returncode == 1 and logs.stderr in (
        f'Error from server (BadRequest): container "unrunnable" in pod "unrunnable" is waiting to start: {why}\n'
        for why in ("trying and failing to pull image", "image can't be pulled")), logs
    kubectl("delete", "pod", "unrunnable", "--wait=true")


PORT_FORWARD_POD = """
apiVersion: v1
kind: Pod
metadata: {name: forwarded, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}   # Ready once it listens, not once it started
"""


def check_port_forward(kubectl) -> None:
    """`kubectl port-forward` (SPDY/3.1 tunnelled in a WebSocket): several connections through one forward reach the
    pod's port; a port nothing listens on gives kubectl the kubelet's error and the client a closed connection, and
    kubectl 1.36 then ends the whole forward ("error: lost connection to pod"), as against a real kubelet."""
    import urllib.request

    kubectl("apply", "-f", "-", input=PORT_FORWARD_POD)
    kubectl("wait", "--for=condition=Ready", "pod/forwarded", "--timeout=60s")
    forward = kubectl.popen("port-forward", "pod/forwarded", ":8080", ":9999")
    try:
        local = {}
        while len(local) < 2:   # a line per address kubectl listens on (127.0.0.1 and [::1]) and port
            line = forward.stdout.readline()
            assert line, forward.stderr.read() if forward.poll() is not None else "kubectl closed its stdout"
            if found := re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line):
                local[int(found[2])] = int(found[1])
        node, failed = answer_node(kubectl), None
        for path in ("/first", "/second", "/third"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local[8080]}{path}", timeout=10) as answer:
                    body = json.load(answer)
            except OSError as error:   # kubectl's stderr says why: asserted below
                failed = f"GET {path}: {error!r}"
                break
            assert body == {"pod": "forwarded", "node": node, "image": "nginx", "path": path, "simulated": True}
        assert failed is None, (failed, forward.communicate(timeout=10) if forward.poll() is not None else "")
        with pytest.raises(OSError):   # the pod side refused: the connection ends without an answer
            urllib.request.urlopen(f"http://127.0.0.1:{local[9999]}/", timeout=10).read()
        _, errors = forward.communicate(timeout=30)   # client-go closes the forward on the error stream's error
    finally:
        if forward.poll() is None:
            forward.terminate()
            forward.communicate(timeout=10)
    assert forward.returncode == 1 and errors.rstrip().endswith("error: lost connection to pod"), errors
    assert re.search(r"an error occurred forwarding \d+ -> 9999: error forwarding port 9999 to pod forwarded_default, "
                     r"uid : failed to connect to [\d.]+:9999 inside the pod's network: Connection refused", errors), errors
    kubectl("delete", "pod", "forwarded", "--wait=true")


def answer_node(kubectl) -> str:
    return kubectl.json("get", "pod", "forwarded")["spec"]["nodeName"]


ATTACH_POD = """
apiVersion: v1
kind: Pod
metadata: {name: attached, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'trap "exit 0" INT; i=0; while true; do i=$((i+1)); echo tick $i; echo warn $i >&2; sleep 0.2; done']
"""


def check_run_interactive(kubectl) -> None:
    """`kubectl run -i --rm`: kubectl makes the pod with `stdin: true, stdinOnce: true`, attaches to it, sends its
    own stdin to the container's, and closes it at its EOF (the container reads EOF); then deletes the pod."""
    run = kubectl("run", "reader", "-i", "--rm", "--restart=Never", "--image=busybox:1.36", "--",
                  "sh", "-c", 'read line; echo "got $line"; if read more; then echo "more $more"; else echo eof; fi',
                  input="hello\n", timeout=120)
    assert "got hello\neof\n" in run.stdout, (run.stdout, run.stderr)
    spec = kubectl("get", "pods", "-o", "json", check=False)
    assert "reader" not in spec.stdout, spec.stdout


def check_attach(kubectl) -> None:
    """`kubectl attach` shows the container's output from the moment it attaches, stdout and stderr apart, and ends
    (exit 0) when the container does."""
    kubectl("apply", "-f", "-", input=ATTACH_POD)
    kubectl("wait", "--for=condition=Ready", "pod/attached", "--timeout=60s")
    deadline = time.monotonic() + 30
    while "tick 5\n" not in kubectl("logs", "attached").stdout:
        assert time.monotonic() < deadline, "no tick 5 in the log"
        time.sleep(0.3)
    attach = kubectl.popen("attach", "attached", "-c", "main")
    try:
        ticks = [attach.stdout.readline() for _ in range(3)]
        numbers = [int(line.split()[1]) for line in ticks if line.startswith("tick ")]
        assert len(numbers) == 3 and numbers[0] > 5 and numbers == list(range(numbers[0], numbers[0] + 3)), ticks
        kubectl("exec", "attached", "--", "kill", "-INT", "1")
        _, errors = attach.communicate(timeout=30)
    finally:
        attach.kill()
    assert attach.returncode == 0, errors
    assert re.search(r"^warn \d+$", errors, re.M) and "tick" not in errors, errors
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/attached", "--timeout=30s")
    kubectl("delete", "pod", "attached", "--wait=true")
