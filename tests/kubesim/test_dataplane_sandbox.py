"""Containers run their own command (issue 14): busybox-like images and a postgres container given a command run
it in a bubblewrap sandbox with the pod's env and volumes; exit codes end in Succeeded/Failed and restartPolicy
is honoured; the container sees nothing of this machine but /usr and /etc, has its own PID and UTS namespaces and
no capabilities."""
from __future__ import annotations

import json

from cluster_support import dump, kubectl, wait_for


def pod(name: str, script: str, image: str = "busybox:1.36", restart: str = "Never", **spec) -> dict:
    container = {"name": "main", "image": image, "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1, "containers": [container],
                     **spec}}


def finished(cluster, name: str) -> dict:
    def phase():
        obj = json.loads(kubectl(cluster, "get", "pod", name, "-o", "json").stdout)
        return obj if obj["status"].get("phase") in ("Succeeded", "Failed") else None
    return wait_for(phase, timeout=30, what=f"pod {name} finished")


def logs(cluster, name: str) -> str:
    return kubectl(cluster, "logs", name).stdout


def test_a_command_runs_with_the_pods_env_and_volumes_and_its_exit_code_decides_the_phase(cluster):
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"},
              "data": {"colour": "blue"}}
    ok = pod("ok", 'echo "$GREETING from $(hostname) in $(pwd)"; cat /config/colour; echo; '
                   'echo written > /work/out && cat /work/out',
             container={"env": [{"name": "GREETING", "value": "hello"}], "workingDir": "/work",
                        "volumeMounts": [{"name": "config", "mountPath": "/config"},
                                         {"name": "scratch", "mountPath": "/work"}]},
             volumes=[{"name": "config", "configMap": {"name": "settings"}}, {"name": "scratch", "emptyDir": {}}])
    kubectl(cluster, "apply", "-f", "-", input=dump(config, ok, pod("bad", "echo failing >&2; exit 3")))
    done = finished(cluster, "ok")
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert logs(cluster, "ok").splitlines() == ["hello from ok in /work", "blue", "written"]
    failed = finished(cluster, "bad")
    assert failed["status"]["phase"] == "Failed"
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert "failing" in logs(cluster, "bad")


def test_on_failure_restarts_until_the_command_succeeds(cluster):
    # the emptyDir outlives the container's restarts: the third run finds two marks and exits 0
    script = "echo run >> /state/runs; test $(wc -l < /state/runs) -ge 3"
    kubectl(cluster, "apply", "-f", "-", input=dump(pod(
        "retry", script, restart="OnFailure", container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]},
        volumes=[{"name": "state", "emptyDir": {}}])))
    done = wait_for(lambda: (lambda p: p if p["status"].get("phase") == "Succeeded" else None)(
        json.loads(kubectl(cluster, "get", "pod", "retry", "-o", "json").stdout)), timeout=60, what="retry Succeeded")
    assert done["status"]["containerStatuses"][0]["restartCount"] == 2


def test_the_sandbox_hides_the_host_and_keeps_a_containers_capabilities(cluster):
    script = ("echo pid=$$; test -e /work/main -o -e /root/.pyenv && echo host-visible; "
              "grep CapEff /proc/self/status; cat /etc/shadow 2>/dev/null | wc -c; "
              "(echo x > /config/new) 2>/dev/null && echo wrote-read-only; ps -e -o pid= | wc -l")
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ro", "namespace": "default"},
              "data": {"k": "v"}}
    mounts = {"volumeMounts": [{"name": "c", "mountPath": "/config", "readOnly": True}]}
    kubectl(cluster, "apply", "-f", "-", input=dump(config, pod(
        "probe", script, container=mounts, volumes=[{"name": "c", "configMap": {"name": "ro"}}]), pod(
        "dropped", "grep CapEff /proc/self/status", container={
            "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}})))
    assert finished(cluster, "probe")["status"]["phase"] == "Succeeded"
    out = logs(cluster, "probe").splitlines()
    assert out[0] == "pid=1"                              # its own PID namespace, the command as PID 1
    assert "host-visible" not in out and "wrote-read-only" not in out
    # containerd's default set less NET_RAW: chown dac_override fowner fsetid kill setgid setuid setpcap
    # net_bind_service sys_chroot mknod audit_write setfcap
    assert out[1].split() == ["CapEff:", "00000000a80405fb"]
    assert out[2] == "0"                                  # /etc/shadow is not there to read
    assert int(out[3]) <= 4                               # init, sh, ps (and wc): nothing of the host
    assert finished(cluster, "dropped")["status"]["phase"] == "Succeeded"
    assert logs(cluster, "dropped").split() == ["CapEff:", "0000000000000001"]   # drop ALL, add CHOWN


def test_a_postgres_container_given_a_command_runs_the_postgres_tools(cluster):
    kubectl(cluster, "apply", "-f", "-", input=dump(pod("tools", "pg_basebackup --version; psql --version",
                                                        image="postgres:16")))
    done = finished(cluster, "tools")
    assert done["status"]["phase"] == "Succeeded", logs(cluster, "tools")
    out = logs(cluster, "tools")
    assert "pg_basebackup (PostgreSQL)" in out and "psql (PostgreSQL)" in out


def test_exec_and_logs_on_kubesims_own_api_server(cluster, tmp_path):
    from kubectl_support import check_exec_and_logs, kubectl_runner

    check_exec_and_logs(kubectl_runner(cluster.kubeconfig_path, str(tmp_path)), cluster.kubeconfig_path)


def test_log_options_on_kubesims_own_api_server(cluster, tmp_path):
    from kubectl_support import check_log_options, kubectl_runner

    check_log_options(kubectl_runner(cluster.kubeconfig_path, str(tmp_path)))


def test_an_unrunnable_image_fails_its_pull_on_kubesims_own_api_server(cluster, tmp_path):
    from kubectl_support import check_unrunnable_image, kubectl_runner

    check_unrunnable_image(kubectl_runner(cluster.kubeconfig_path, str(tmp_path)))


def test_port_forward_on_kubesims_own_api_server(cluster, tmp_path):
    from kubectl_support import check_port_forward, kubectl_runner

    check_port_forward(kubectl_runner(cluster.kubeconfig_path, str(tmp_path)))


def test_run_interactive_on_kubesims_own_api_server(cluster, tmp_path):
    from kubectl_support import check_run_interactive, kubectl_runner

    check_run_interactive(kubectl_runner(cluster.kubeconfig_path, str(tmp_path)))


def test_attach_on_kubesims_own_api_server(cluster, tmp_path):
    from kubectl_support import check_attach, kubectl_runner

    check_attach(kubectl_runner(cluster.kubeconfig_path, str(tmp_path)))


def test_exec_into_postgres_reaches_the_server_over_its_local_socket(cluster):
    """As in the official image: `psql -U postgres` in the container connects over the unix socket, trusted."""
    db = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "default"},
          "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
              "name": "postgres", "image": "postgres:16", "env": [{"name": "POSTGRES_PASSWORD", "value": "pw"}],
              "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres"]}, "periodSeconds": 1}}]}}
    kubectl(cluster, "apply", "-f", "-", input=dump(db))
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/db", "--timeout=90s", timeout=100)
    answer = kubectl(cluster, "exec", "db", "--", "psql", "-U", "postgres", "-tAc", "select 41 + 1")
    assert answer.stdout == "42\n"


def test_init_containers_run_in_order_to_completion_before_the_pods_containers(cluster):
    """The second init container sees what the first wrote; the main container starts only after both; the statuses
    say so (initContainerStatuses, Initialized), as kubectl's Init:N/M column reads them."""
    scratch = {"volumeMounts": [{"name": "work", "mountPath": "/work"}]}
    spec = pod("ordered", "cat /work/steps; echo main >> /work/steps", volumes=[{"name": "work", "emptyDir": {}}],
               container=scratch)
    spec["spec"]["initContainers"] = [
        {"name": "first", "image": "busybox:1.36", "command": ["sh", "-c", "sleep 1; echo first > /work/steps"],
         **scratch},
        {"name": "second", "image": "busybox:1.36", "command": ["sh", "-c", "cat /work/steps >/dev/null && "
                                                                            "echo second >> /work/steps"], **scratch}]
    kubectl(cluster, "apply", "-f", "-", input=dump(spec))

    def initialising():
        obj = json.loads(kubectl(cluster, "get", "pod", "ordered", "-o", "json").stdout)
        inits = obj["status"].get("initContainerStatuses") or []
        return obj if inits and "running" in inits[0]["state"] else None
    early = wait_for(initialising, timeout=30, what="first init container running")
    assert early["status"]["phase"] == "Pending"
    initialized = next(c for c in early["status"]["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["reason"]) == ("False", "ContainersNotInitialized")
    assert early["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    assert "Init:0/2" in kubectl(cluster, "get", "pod", "ordered").stdout

    done = finished(cluster, "ordered")
    assert done["status"]["phase"] == "Succeeded"
    assert logs(cluster, "ordered").splitlines() == ["first", "second"]
    assert [(c["name"], c["state"]["terminated"]["reason"]) for c in done["status"]["initContainerStatuses"]] == \
        [("first", "Completed"), ("second", "Completed")]
    assert next(c for c in done["status"]["conditions"] if c["type"] == "Initialized")["status"] == "True"
    assert kubectl(cluster, "logs", "ordered", "-c", "first").stdout == ""


def test_a_failing_init_container_fails_the_pod_without_starting_its_containers(cluster):
    spec = pod("blocked", "echo main-ran")
    spec["spec"]["initContainers"] = [{"name": "check", "image": "busybox:1.36",
                                       "command": ["sh", "-c", "echo no-primary >&2; exit 2"]}]
    kubectl(cluster, "apply", "-f", "-", input=dump(spec))
    done = finished(cluster, "blocked")
    assert done["status"]["phase"] == "Failed"
    terminated = done["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (2, "Error")
    assert done["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    assert "no-primary" in kubectl(cluster, "logs", "blocked", "-c", "check").stdout
