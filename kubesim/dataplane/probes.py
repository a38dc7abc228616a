"""Kubelet probes (startup, liveness, readiness) executed for real against a container's process."""
from __future__ import annotations

import http.client
import logging
import os
import shutil
import socket
import ssl
from dataclasses import dataclass
from typing import Callable

from . import processes
from .network import LoopbackNetwork

log = logging.getLogger("kubesim.dataplane")

SHELLS = ("sh", "bash")   # exec probes of the form [sh, -c, "pg_isready …"]


@dataclass
class ProbeTarget:
    """What a probe needs of its container: where it listens and how its exec commands run."""
    pod_ip: str
    ports: dict[str, int]                      # containerPort name -> number
    network: LoopbackNetwork
    exec_programs: dict[str, str]              # exec command -> real program
    exec_env: dict[str, str]

    def port(self, value) -> int:
        return int(value) if str(value).isdigit() else self.ports[value]


class ProbeFailure(Exception):
    """A probe got an answer, and the answer is a failure (the message is the kubelet's wording)."""


def _dial_error(error: OSError) -> str:
    """How Go's net package words a failed connection (what the kubelet's probe messages show)."""
    if isinstance(error, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(error, ConnectionResetError):
        return "read: connection reset by peer"
    if isinstance(error, TimeoutError):
        return "i/o timeout"
    return (error.strerror or str(error)).lower()


def _http_get(spec: dict, target: ProbeTarget, timeout: float) -> None:
    pod_host, pod_port = spec.get("host") or target.pod_ip, target.port(spec["port"])
    host, port = target.network.local(pod_host, pod_port)
    https = spec.get("scheme", "HTTP").upper() == "HTTPS"
    url = f"{'https' if https else 'http'}://{pod_host}:{pod_port}{spec.get('path', '/')}"
    connection = http.client.HTTPSConnection(host, port, timeout=timeout,
                                             context=ssl._create_unverified_context()) if https else \
        http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            connection.connect()
        except OSError as error:
            raise ProbeFailure(f'Get "{url}": dial tcp {pod_host}:{pod_port}: {_dial_error(error)}') from error
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
        try:
            connection.request("GET", spec.get("path", "/"), headers={"User-Agent": "kube-probe/1.32", **headers})
            status = connection.getresponse().status
        except TimeoutError as error:
            raise ProbeFailure(f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while '
                               'awaiting headers)') from error
        except (OSError, http.client.HTTPException) as error:
            raise ProbeFailure(f'Get "{url}": {_dial_error(error) if isinstance(error, OSError) else "EOF"}') \
                from error
        if not 200 <= status < 400:
            raise ProbeFailure(f"HTTP probe failed with statuscode: {status}")
    finally:
        connection.close()


def _tcp_socket(spec: dict, target: ProbeTarget, timeout: float) -> None:
    pod_host, pod_port = spec.get("host") or target.pod_ip, target.port(spec["port"])
    try:
        socket.create_connection(target.network.local(pod_host, pod_port), timeout=timeout).close()
    except OSError as error:
        raise ProbeFailure(f"dial tcp {pod_host}:{pod_port}: {_dial_error(error)}") from error


def _exec_argv(command: list[str], programs: dict[str, str]) -> list[str] | None:
    """The real argv of an exec probe: a known program, or a shell snippet starting with one."""
    name = os.path.basename(command[0]) if command else ""
    if name in programs:
        return [programs[name], *command[1:]]
    if name in SHELLS and command[1:2] == ["-c"] and len(command) > 2:
        words = command[2].split()
        if words and os.path.basename(words[0]) in programs:
            return ["/bin/sh", "-c", command[2]]
    return None


def _exec(spec: dict, target: ProbeTarget, timeout: float) -> None:
    command = list(spec.get("command") or [])
    argv = _exec_argv(command, target.exec_programs)
    if argv is None:
        log.debug("exec probe %s has no program on this machine; counted as success", command)
        return
    # a shell snippet finds the image's programs first on its PATH
    path = os.pathsep.join([*dict.fromkeys(os.path.dirname(p) for p in target.exec_programs.values()),
                            os.environ.get("PATH", "")])
    code = processes.run(argv, {**os.environ, **target.exec_env, "PATH": path}, timeout)
    if code != 0:
        raise ProbeFailure(f"command {command} exited with {code}" if code >= 0 else
                           f"command {command} timed out")


# Probe handler by the key of its action in the probe spec; each raises when the probe fails.
_ACTIONS: dict[str, Callable[[dict, ProbeTarget, float], None]] = {
    "httpGet": _http_get, "tcpSocket": _tcp_socket, "exec": _exec}


@dataclass
class Prober:
    """One probe of one container: its schedule, counters and current verdict."""
    spec: dict
    started: float                       # monotonic time the container started
    passing: bool = False
    message: str | None = None           # why the last probe failed
    successes: int = 0
    failures: int = 0
    next_due: float = 0.0

    def __post_init__(self) -> None:
        self.next_due = self.started + float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    def run(self, target: ProbeTarget, now: float) -> None:
        """Probe once and update the verdict with the success/failure thresholds."""
        self.next_due = now + self.period
        action = next((k for k in _ACTIONS if k in self.spec), None)
        if action is None:  # grpc: no client here, the probe counts as passing
            self.message, self.successes, self.failures, self.passing = None, self.successes + 1, 0, True
            return
        try:
            _ACTIONS[action](self.spec[action], target, float(self.spec.get("timeoutSeconds", 1)))
            self.message = None
        except (ProbeFailure, OSError, http.client.HTTPException, KeyError, ValueError) as error:
            self.message = str(error) if isinstance(error, ProbeFailure) else \
                f"{action} {self.spec[action].get('path', '')} failed: {error}".replace("  ", " ")
        if self.message is None:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.passing = False

    @property
    def failed(self) -> bool:
        """Failed often enough that the kubelet acts (restart for liveness and startup probes)."""
        return self.failures >= int(self.spec.get("failureThreshold", 3))


def known_programs(entry_exec: dict, placeholders: dict) -> dict[str, str]:
    return {name: program.format(**placeholders) for name, program in entry_exec.items()
            if shutil.which(program.format(**placeholders))}
