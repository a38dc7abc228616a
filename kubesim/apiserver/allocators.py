"""Service ClusterIP (127.96-99.<network_id>.x, loopback so the data plane can bind them) and NodePort allocation."""
from __future__ import annotations

import ipaddress
import threading

from .. import errors
from ..resources import SERVICES

SERVICE_CIDR = ipaddress.ip_network("127.96.0.0/14")   # requested ClusterIPs may be anywhere in it
NODE_PORT_RANGE = range(30000, 32768)
NEEDS_NODE_PORT = ("NodePort", "LoadBalancer")


class ServiceAllocator:
    """Fills spec.clusterIP(s) and nodePorts of a new Service; callers hold .lock until it is stored."""

    def __init__(self, store, network_id: int):
        self.store = store
        self.ranges = [ipaddress.ip_network(f"127.{96 + i}.{network_id}.0/24") for i in range(4)]
        self.addresses = [str(ip) for net in self.ranges for ip in net.hosts()]
        self.lock = threading.Lock()
        self._next_ip = 1

    def _used(self) -> tuple[set[str], set[int]]:
        services, _ = self.store.snapshot(SERVICES)
        ips = {s["spec"].get("clusterIP") for s in services if s.get("spec")}
        ports = {p.get("nodePort") for s in services if s.get("spec") for p in s["spec"].get("ports") or []}
        return ips, ports

    def allocate(self, svc: dict, old: dict | None = None) -> None:
        spec = svc.setdefault("spec", {})
        if old is not None:  # carried over on update when the client left them out, as upstream does
            for field in ("clusterIP", "clusterIPs"):
                if field not in spec and field in old.get("spec", {}):
                    spec[field] = old["spec"][field]
        used_ips, used_ports = self._used()
        if old is not None:
            used_ports -= {p.get("nodePort") for p in old["spec"].get("ports") or []}
        if spec.get("type") != "ExternalName" and spec.get("clusterIP") in (None, ""):
            spec["clusterIP"] = self._free_ip(used_ips)
        elif old is None and spec.get("clusterIP") not in (None, "None"):
            self._check_requested_ip(spec["clusterIP"], used_ips)
        if spec.get("clusterIP"):
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec.get("type") in NEEDS_NODE_PORT:
            for i, port in enumerate(spec.get("ports") or []):
                if not isinstance(port, dict):
                    continue
                if port.get("nodePort"):
                    if port["nodePort"] in used_ports:
                        raise errors.invalid("Service", svc["metadata"].get("name", ""), [{
                            "reason": "FieldValueInvalid", "field": f"spec.ports[{i}].nodePort",
                            "message": f"Invalid value: {port['nodePort']}: provided port is already allocated"}])
                else:
                    port["nodePort"] = next(p for p in NODE_PORT_RANGE if p not in used_ports)
                used_ports.add(port["nodePort"])

    def _free_ip(self, used: set) -> str:
        size = len(self.addresses)
        for step in range(size):
            candidate = self.addresses[(self._next_ip - 1 + step) % size]
            if candidate not in used:
                self._next_ip = (self._next_ip + step) % size + 1
                return candidate
        raise errors.ApiError(500, "InternalError", "range is full: no ClusterIPs left in "
                              + ", ".join(map(str, self.ranges)))

    @staticmethod
    def _check_requested_ip(ip: str, used: set) -> None:
        field = {"reason": "FieldValueInvalid", "field": "spec.clusterIPs"}
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise errors.invalid("Service", "", [dict(field, message=f'Invalid value: "{ip}": must be a valid IP '
                                                                       f'address, (e.g. 10.9.8.7 or 2001:db8::ffff)')])
        if address not in SERVICE_CIDR:
            raise errors.invalid("Service", "", [dict(field, message=f'Invalid value: ["{ip}"]: failed to '
                                 f'allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range '
                                 f'of valid IPs is {SERVICE_CIDR}')])
        if ip in used:
            raise errors.invalid("Service", "", [dict(field, message=f'Invalid value: ["{ip}"]: failed to '
                                 f'allocate IP {ip}: provided IP is already allocated')])
