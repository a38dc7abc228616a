"""Where pods and ClusterIPs of a cluster live on this machine.

kubesim's own API server: pods of node n at 127.(100+n).<network_id>.k and ClusterIPs in 127.96.0.0/14, all
bindable on Linux's loopback without privileges.

The real API server refuses loopback addresses in EndpointSlices and Endpoints ("may not be in the loopback
range"), so on the real control plane pods and ClusterIPs take addresses of two private ranges that
`ensure_local_routes` routes to the loopback device (`ip route add local <range> dev lo`, what makes 127/8
bindable): every address in them is then this machine's, as 127.x is, with one route each instead of an
interface per pod. Each cluster takes a slice of both by its network_id, so two clusters on one machine do not
answer on each other's addresses.
"""
from __future__ import annotations

import ipaddress
import subprocess

# Not 10.0.0.0/8 as a whole: this machine's resolver may be in it (seen: 10.255.255.53).
POD_RANGE = ipaddress.ip_network("10.224.0.0/12")       # 10.224-239.x.x: 16 x 16 clusters of 15 nodes
SERVICE_RANGE = ipaddress.ip_network("10.208.0.0/12")   # 10.208-223.x.x: a /20 per cluster
# Services' external addresses (spec.externalIPs) for the demo and the tests: an API server refuses loopback,
# link-local and unspecified ones, so these stand for "an address of the cluster's nodes or load balancer".
EXTERNAL_RANGE = ipaddress.ip_network("10.192.0.0/12")  # 10.192-207.x.x
MAX_REAL_NODES = 15


def pod_cidr(network_id: int, index: int, real: bool) -> str:
    """The /24 of node ``index`` (1-based) of cluster ``network_id``."""
    if not real:
        return f"127.{100 + index}.{network_id}.0/24"
    if not 1 <= index <= MAX_REAL_NODES:
        raise ValueError(f"node index {index}: the real control plane's address plan has room for "
                         f"{MAX_REAL_NODES} nodes per cluster")
    return f"10.{POD_RANGE.network_address.packed[1] + network_id // 16}.{network_id % 16 * 16 + index}.0/24"


def service_cidr(network_id: int) -> str:
    """The ClusterIP range (a /20) of cluster ``network_id`` on the real control plane."""
    return f"10.{SERVICE_RANGE.network_address.packed[1] + network_id // 16}.{network_id % 16 * 16}.0/20"


def external_address(n: int) -> str:
    """The n-th external address (n >= 1) of EXTERNAL_RANGE."""
    return str(EXTERNAL_RANGE[n])


def ensure_local_routes(ranges=(POD_RANGE, SERVICE_RANGE, EXTERNAL_RANGE)) -> None:
    """Route every range to the loopback device unless it already is; RuntimeError saying why it cannot."""
    for network in ranges:
        shown = subprocess.run(["ip", "route", "show", "table", "local", str(network)],
                               capture_output=True, text=True)
        if shown.returncode == 0 and f"local {network} dev lo" in shown.stdout:
            continue
        added = subprocess.run(["ip", "route", "add", "local", str(network), "dev", "lo"],
                               capture_output=True, text=True)
        if added.returncode != 0 and "File exists" not in added.stderr:
            raise RuntimeError(
                f"kubesim on the real control plane needs {network} routed to the loopback device, and "
                f"`ip route add local {network} dev lo` failed: {added.stderr.strip() or added.returncode} "
                f"(it needs CAP_NET_ADMIN: run as root, or add the route once beforehand)")
