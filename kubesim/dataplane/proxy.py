"""Service proxies like kube-proxy's userspace mode: a real TCP listener per Service port and address.

One asyncio loop in one thread carries every connection. Each Service port listens on its clusterIP,
on each externalIP / load-balancer IP (when that address cannot be bound here: on a free 127.0.0.1
port, reported in the Service annotation ``kubesim.io/proxy-address`` and the log) and on its
nodePort at every node's InternalIP. A new connection goes to the next Ready endpoint (round robin,
the next one when connecting fails). While a port has no Ready endpoint its listeners are closed, so
connecting is refused like kube-proxy's REJECT rule; one accepted just before (or whose endpoints all
fail) is reset. Endpoint changes apply to new connections only: established ones run until either
side closes.

Endpoints come from EndpointSlices when a Service has any, else from its Endpoints object; the
proxy re-reads a Service's objects from the store whenever the store reports a change to them.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import threading
from dataclasses import dataclass, field

from .. import errors, resources
from ..store import Event, Store
from .network import LoopbackNetwork

log = logging.getLogger("kubesim.dataplane.proxy")

PROXY_ADDRESS_ANNOTATION = "kubesim.io/proxy-address"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
FALLBACK_HOST = "127.0.0.1"
HIGH_WATER = 256 * 1024        # bytes buffered towards one side before the other side is paused
WATCHED = {resources.SERVICES.key, resources.ENDPOINTS.key, resources.ENDPOINTSLICES.key, resources.NODES.key}


@dataclass
class Backends:
    """The Ready endpoints of one Service port; replaced as a whole, read by new connections."""
    addresses: list[tuple[str, int]] = field(default_factory=list)
    _turn: itertools.count = field(default_factory=itertools.count)

    def in_turn(self) -> list[tuple[str, int]]:
        """Every endpoint once, starting with the next one in round-robin order."""
        current = self.addresses
        if not current:
            return []
        start = next(self._turn) % len(current)
        return current[start:] + current[:start]


class _Side(asyncio.Protocol):
    """One side of a proxied connection; relays to its peer with flow control and half-close."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer.eof or not self.peer.transport.can_write_eof():
            self.peer.transport.close()
            return False
        self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()


class _Client(_Side):
    """The accepted connection: connects to an endpoint, then relays."""

    def __init__(self, proxy: "ServiceProxy", backends: Backends):
        super().__init__()
        self._proxy = proxy
        self._backends = backends

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._proxy.connections.add(self)
        candidates = self._backends.in_turn()
        if not candidates:
            _reset(transport)
            return
        transport.pause_reading()  # nothing is read before there is somewhere to send it
        asyncio.get_running_loop().create_task(self._connect(candidates))

    async def _connect(self, candidates: list[tuple[str, int]]) -> None:
        loop = asyncio.get_running_loop()
        for ip, port in candidates:
            try:
                upstream_transport, upstream = await loop.create_connection(
                    _Side, *self._proxy.network.local(ip, port))
            except OSError:
                continue
            if self.transport.is_closing():
                upstream_transport.close()
                return
            upstream_transport.set_write_buffer_limits(HIGH_WATER)
            self.transport.set_write_buffer_limits(HIGH_WATER)
            upstream.peer, self.peer = self, upstream
            self.transport.resume_reading()
            return
        _reset(self.transport)

    def connection_lost(self, exc) -> None:
        self._proxy.connections.discard(self)
        super().connection_lost(exc)


def _reset(transport: asyncio.Transport) -> None:
    """Refuse an accepted connection the way a closed port would: RST, not an orderly close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass
class _Listener:
    server: asyncio.AbstractServer | None   # None: closed while the port has no Ready endpoint
    address: tuple[str, int]        # where it really listens (or listened, and will again)


class ServiceProxy:
    def __init__(self, store: Store, network: LoopbackNetwork):
        self.store = store
        self.network = network
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubesim-proxy", daemon=True)
        self._backends: dict[tuple[str, str, str], Backends] = {}          # (ns, svc, port name)
        self._listeners: dict[tuple, _Listener] = {}                       # (ns, svc, port name, kind, host, port)
        self.connections: set[_Client] = set()                             # open client connections
        self._dirty: set[tuple[str, str]] = set()
        self._resyncing: asyncio.Task | None = None
        self._started = False

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self.store.add_listener(self._on_event)
        self._started = True
        self._call(self._resync_all)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._call(self._close_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def listening(self, namespace: str, name: str) -> dict[tuple, tuple[str, int]]:
        """(port name, kind, wanted host, wanted port) -> where that listener really is (for tests/CLI)."""
        return self._call(lambda: {k[2:]: v.address for k, v in self._listeners.items()
                                   if k[:2] == (namespace, name)})

    def _call(self, fn):
        """Run fn (a plain function or a coroutine function) in the proxy's loop; wait for its result."""
        async def wrapped():
            result = fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result()

    # ---- reacting to the store ------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        """Runs under the store lock: only hand the change to the loop."""
        if event.resource.key in WATCHED and self._started:
            try:
                self._loop.call_soon_threadsafe(self._changed, event.resource.key, event.object)
            except RuntimeError:  # the loop closed while this event was on its way: nothing left to update
                pass

    def _changed(self, key: str, obj: dict) -> None:
        meta = obj["metadata"]
        if key == resources.NODES.key:
            services, _ = self.store.snapshot(resources.SERVICES)
            self._dirty.update((s["metadata"]["namespace"], s["metadata"]["name"]) for s in services)
        else:
            service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL) \
                if key == resources.ENDPOINTSLICES.key else meta["name"]
            if service:
                self._dirty.add((meta.get("namespace", ""), service))
        if self._dirty and self._resyncing is None:
            self._resyncing = self._loop.create_task(self._resync_dirty())

    async def _resync_dirty(self) -> None:
        try:
            while self._dirty:
                await self._sync(*self._dirty.pop())
        finally:
            self._resyncing = None

    async def _resync_all(self) -> None:
        services, _ = self.store.snapshot(resources.SERVICES)
        for s in services:
            await self._sync(s["metadata"]["namespace"], s["metadata"]["name"])

    def _close_all(self) -> None:
        for key in list(self._listeners):
            self._close(self._listeners.pop(key))
        for client in list(self.connections):
            client.transport.abort()
            if client.peer is not None:
                client.peer.transport.abort()

    # ---- one Service ----------------------------------------------------------------------------
    async def _sync(self, namespace: str, name: str) -> None:
        service = self.store.find(resources.SERVICES, namespace, name)
        ports = [p for p in (service or {}).get("spec", {}).get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
        endpoints = self._ready_endpoints(namespace, name) if service else {}
        wanted: dict[tuple, None] = {}
        for port in ports:
            port_name = port.get("name") or ""
            backends = self._backends.setdefault((namespace, name, port_name), Backends())
            # slices may overlap while they churn: each endpoint once
            backends.addresses = list(dict.fromkeys(endpoints.get(port_name, [])))
            for kind, host, number in self._addresses(service, port):
                wanted[(namespace, name, port_name, kind, host, number)] = None
        for key in [k for k in self._listeners if k[:2] == (namespace, name) and k not in wanted]:
            self._close(self._listeners.pop(key))
            log.info("service %s/%s: stopped listening on %s:%d", namespace, name, *key[4:])
        for key in wanted:
            listener = self._listeners.get(key)
            if listener is None:
                await self._listen(key)
            elif not self._backends[key[:3]].addresses:
                self._close(listener)   # no Ready endpoint: refuse connections (kube-proxy REJECT)
            elif listener.server is None:
                await self._listen(key, listener.address)
        for key in [k for k in self._backends if k[:2] == (namespace, name)
                    and k[2] not in {p.get("name") or "" for p in ports}]:
            del self._backends[key]
        if service is not None:
            self._report_fallbacks(service)

    def _addresses(self, service: dict, port: dict) -> list[tuple[str, str, int]]:
        """(kind, host, port) of every listener a Service port wants."""
        spec = service.get("spec") or {}
        out = []
        if spec.get("clusterIP") and spec["clusterIP"] != "None":
            out.append(("clusterIP", spec["clusterIP"], port["port"]))
        ingress = [i.get("ip") for i in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
        for ip in dict.fromkeys([*(spec.get("externalIPs") or []), *filter(None, ingress)]):
            out.append(("external", ip, port["port"]))
        if port.get("nodePort") and spec.get("type") in ("NodePort", "LoadBalancer"):
            out.extend(("nodePort", ip, port["nodePort"]) for ip in self._node_ips())
        return out

    def _node_ips(self) -> list[str]:
        nodes, _ = self.store.snapshot(resources.NODES)
        return [a["address"] for n in nodes for a in (n.get("status") or {}).get("addresses") or []
                if a.get("type") == "InternalIP"]

    def _ready_endpoints(self, namespace: str, name: str) -> dict[str, list[tuple[str, int]]]:
        """Port name -> Ready (ip, port), from the Service's EndpointSlices, else its Endpoints."""
        slices = [s for s in self.store.snapshot(resources.ENDPOINTSLICES, namespace)[0]
                  if (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == name]
        out: dict[str, list[tuple[str, int]]] = {}
        if slices:
            for s in slices:
                ips = [a for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready") is not False
                       for a in e.get("addresses") or []]
                for p in s.get("ports") or []:
                    out.setdefault(p.get("name") or "", []).extend((ip, p["port"]) for ip in ips)
            return out
        endpoints = self.store.find(resources.ENDPOINTS, namespace, name) or {}
        for subset in endpoints.get("subsets") or []:
            ips = [a["ip"] for a in subset.get("addresses") or []]
            for p in subset.get("ports") or []:
                out.setdefault(p.get("name") or "", []).extend((ip, p["port"]) for ip in ips)
        return out

    @staticmethod
    def _close(listener: _Listener) -> None:
        if listener.server is not None:
            listener.server.close()
            listener.server = None

    async def _listen(self, key: tuple, again: tuple[str, int] | None = None) -> None:
        """Listen for one Service port address (``again``: reopen where it listened before)."""
        namespace, name, port_name, kind, host, number = key
        backends = self._backends[(namespace, name, port_name)]
        # cluster IPs and node IPs are this machine's loopback addresses (remapped where those are not bindable)
        choices = ((host, number), (FALLBACK_HOST, 0)) if kind == "external" else (self.network.local(host, number),)
        for bind_host, bind_port in ((again,) if again else choices):
            sock = socket.socket()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((bind_host, bind_port))
            except OSError as error:
                sock.close()
                # EADDRINUSE on a cluster/node IP: most likely another kubesim on this machine with the same
                # address plan; retried on the Service's next change
                log.warning("service %s/%s: cannot listen on %s:%d (%s)", namespace, name, bind_host, bind_port,
                            error.strerror)
                continue
            sock.listen(1024)
            server = await self._loop.create_server(lambda: _Client(self, backends), sock=sock)
            listener = self._listeners[key] = _Listener(server, sock.getsockname())
            log.info("service %s/%s port %s: %s %s:%d listening on %s:%d", namespace, name, port_name or number,
                     kind, host, number, *listener.address)
            if not backends.addresses:   # the address is reserved and reported; connecting is refused
                self._close(listener)
            return

    def _report_fallbacks(self, service: dict) -> None:
        """Publish where unbindable external addresses really listen, in the Service's annotation."""
        meta = service["metadata"]
        moved = [self._listeners[k].address for k in sorted(self._listeners)
                 if k[:2] == (meta["namespace"], meta["name"]) and k[3] == "external"
                 and self._listeners[k].address != (k[4], k[5])]
        value = ",".join("%s:%d" % a for a in moved) or None
        if (meta.get("annotations") or {}).get(PROXY_ADDRESS_ANNOTATION) == value:
            return

        def annotate(obj: dict) -> None:
            annotations = obj["metadata"].setdefault("annotations", {})
            if value is None:
                annotations.pop(PROXY_ADDRESS_ANNOTATION, None)
            else:
                annotations[PROXY_ADDRESS_ANNOTATION] = value
        try:
            self.store.mutate(resources.SERVICES, meta["namespace"], meta["name"], annotate)
        except errors.ApiError as error:
            # kube-proxy's identity on the real control plane (system:node-proxier) may not write Services
            log.warning("service %s/%s: external addresses listen on %s; not annotated (%s %s)", meta["namespace"],
                        meta["name"], value, error.code, error.reason)
