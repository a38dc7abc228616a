"""Where a pod's ``ip:port`` really listens on this machine.

Linux routes all of 127.0.0.0/8 to the loopback device, so every pod binds its own 127.x.y.z address
without root and two pods can both listen on :8080. macOS only answers on 127.0.0.1: there each
(pod_ip, port) is remapped to a free 127.0.0.1 port, recorded here, and the runtime (which binds),
the probes and the service proxy (which connect) all ask this one table.
"""
from __future__ import annotations

import socket
import sys
import threading

PER_POD_LOOPBACK = sys.platform.startswith("linux")


class LoopbackNetwork:
    def __init__(self, per_pod_addresses: bool = PER_POD_LOOPBACK):
        self.per_pod_addresses = per_pod_addresses
        self._remapped: dict[tuple[str, int], tuple[str, int]] = {}
        self._lock = threading.Lock()

    def local(self, ip: str, port: int) -> tuple[str, int]:
        """The address a process serving ``ip:port`` binds, and a client of it connects to."""
        if self.per_pod_addresses:
            return ip, port
        with self._lock:
            if (ip, port) not in self._remapped:
                self._remapped[(ip, port)] = ("127.0.0.1", free_port("127.0.0.1"))
            return self._remapped[(ip, port)]

    def release(self, ip: str) -> None:
        """Forget the remapped ports of a pod address once its pod is gone."""
        with self._lock:
            for key in [k for k in self._remapped if k[0] == ip]:
                del self._remapped[key]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
