"""Child processes that cannot outlive kubesim: own process group, killed with their parent.

On Linux every child asks the kernel for SIGKILL when the thread that started it dies
(PR_SET_PDEATHSIG), so even a SIGKILLed kubesim leaves nothing running. The signal follows the
*thread*, so children must be started from a thread that lives as long as they do (the pod's
supervisor thread). Processes a child forks itself die with it by design (PostgreSQL backends watch
the postmaster) or with the process group on a normal stop. macOS has no such signal: there only
stop_pod/close() (the cluster's stop) end the processes.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
# Looked up now: a forked child must not resolve symbols (the loader lock may be held by another thread).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int) -> None:
    """In a child (before exec, after any uid change, which clears the setting): die with the parent."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def spawn(argv: list[str], env: dict[str, str], log_path: str, cwd: str | None = None) -> subprocess.Popen:
    """Start argv in its own session with stdout and stderr appended to log_path."""
    parent_pid = os.getpid()
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                preexec_fn=lambda: die_with_parent(parent_pid))


def spawn_piped(argv: list[str], env: dict[str, str], cwd: str | None = None, stdin: bool = False) -> subprocess.Popen:
    """Start argv in its own session with stdout and stderr on pipes of their own (a container's, for its log), and
    stdin on a pipe when asked (a container with `stdin: true`), else /dev/null."""
    parent_pid = os.getpid()
    return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                            preexec_fn=lambda: die_with_parent(parent_pid))


def run(argv: list[str], env: dict[str, str], timeout: float) -> int:
    """Run a short command (exec probes) to completion; -1 when it timed out."""
    parent_pid = os.getpid()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                            preexec_fn=lambda: die_with_parent(parent_pid))
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()
        return -1


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(stops: list[tuple[subprocess.Popen, int]], grace_seconds: float) -> None:
    """Like a container stop: each main process gets its stop signal, every group SIGKILL after the grace."""
    for proc, stop_signal in stops:
        if proc.poll() is None:
            try:
                proc.send_signal(stop_signal)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + max(0.0, grace_seconds)
    for proc, _ in stops:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc, _ in stops:
        kill_group(proc.pid)  # whatever the main process left behind in its group goes too
        proc.wait()
        _wait_group_gone(proc.pid, deadline=time.monotonic() + 5)


def _wait_group_gone(pgid: int, deadline: float) -> None:
    while time.monotonic() < deadline and _group_alive(pgid):
        kill_group(pgid)
        time.sleep(0.01)


def _group_alive(pgid: int) -> bool:
    """Whether a process group still has a member that is not a zombie (an init that never reaps, as in
    some containers, would otherwise keep a dead group "alive")."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
