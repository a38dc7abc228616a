"""endpoints-controller: the Endpoints object of every Service with a selector, ready and not-ready
addresses apart, so the data plane and kubectl see which pods serve traffic (latency-critical)."""
from __future__ import annotations

from .. import labels
from ..resources import ENDPOINTS, PODS, SERVICES
from ..store import Event
from .base import Controller, obj_key, same_keys
from .pods import is_finished, is_ready, is_terminating


def services_selecting(cache, event: Event) -> list[tuple[str, str]]:
    """Keys of the Services whose selector matches the pod before or after the change."""
    if event.type == "MODIFIED" and endpoint_view(event.old) == endpoint_view(event.object):
        return []   # nothing an endpoint shows has changed (most kubelet status writes)
    ns = event.object["metadata"]["namespace"]
    keys = {(ns, svc["metadata"]["name"]) for svc in cache.services_selecting(ns, event.object["metadata"].get("labels"))}
    if event.old is not None and event.old["metadata"].get("labels") != event.object["metadata"].get("labels"):
        keys |= {(ns, svc["metadata"]["name"]) for svc in cache.services_selecting(ns, event.old["metadata"].get("labels"))}
    return list(keys)


def endpoint_view(pod: dict) -> tuple:
    """What Endpoints and EndpointSlices show of a pod."""
    status = pod.get("status") or {}
    return (pod["metadata"].get("labels"), status.get("podIP"), is_ready(pod), is_terminating(pod),
            is_finished(pod), pod["spec"].get("nodeName"), pod["spec"].get("hostname"), pod["spec"].get("subdomain"))


def selected_pods(cache, svc: dict) -> list[dict]:
    """Pods of the Service with an IP, sorted by name; terminating ones included (callers decide)."""
    pods = cache.select(PODS, svc["metadata"]["namespace"], labels.from_map(svc["spec"]["selector"]))
    return sorted((p for p in pods if (p.get("status") or {}).get("podIP") and not is_finished(p)),
                  key=lambda p: p["metadata"]["name"])


def endpoint_ports(svc: dict, pod: dict) -> tuple[tuple[str | None, int, str], ...]:
    """(name, port, protocol) per Service port, with named targetPorts resolved from the pod's containers."""
    out = []
    for sp in svc["spec"].get("ports") or ():
        target = sp.get("targetPort", sp.get("port"))
        protocol = sp.get("protocol", "TCP")
        if isinstance(target, str) and not target.isdigit():
            found = next((cp["containerPort"] for c in pod["spec"].get("containers") or ()
                          for cp in c.get("ports") or () if cp.get("name") == target
                          and cp.get("protocol", "TCP") == protocol), None)
            if found is None:
                continue
            target = found
        out.append((sp.get("name"), int(target), protocol))
    return tuple(out)


def target_ref(pod: dict) -> dict:
    meta = pod["metadata"]
    return {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}


class EndpointsController(Controller):
    name = "endpoints"
    dedicated = True   # readiness must reach the data plane within milliseconds, whatever else is busy

    def watches(self):
        return {SERVICES.key: same_keys, PODS.key: lambda e: services_selecting(self.cache, e)}

    def initial_keys(self):
        return [obj_key(s) for s in self.cache.list(SERVICES)]

    def sync(self, key) -> None:
        ns, name = key
        svc = self.cache.get(SERVICES, ns, name)
        current = self.cache.get(ENDPOINTS, ns, name)
        if svc is None:
            if current is not None:
                self.store.remove(ENDPOINTS, ns, name)
            return
        if not svc["spec"].get("selector"):
            return   # Endpoints of selector-less Services belong to their user
        subsets: dict[tuple, dict] = {}
        publish_all = svc["spec"].get("publishNotReadyAddresses", False)
        for pod in selected_pods(self.cache, svc):
            if is_terminating(pod) and not publish_all:
                continue
            ports = endpoint_ports(svc, pod)
            if svc["spec"].get("ports") and not ports:
                continue
            address = {"ip": pod["status"]["podIP"], "targetRef": target_ref(pod)}
            if pod["spec"].get("nodeName"):
                address["nodeName"] = pod["spec"]["nodeName"]
            if pod["spec"].get("hostname") and pod["spec"].get("subdomain") == name:
                address["hostname"] = pod["spec"]["hostname"]
            subset = subsets.setdefault(ports, {})
            bucket = "addresses" if publish_all or is_ready(pod) else "notReadyAddresses"
            subset.setdefault(bucket, []).append(address)
        desired = []
        for ports, subset in subsets.items():
            for bucket in subset.values():
                bucket.sort(key=lambda a: a["ip"])
            if ports:
                subset["ports"] = [dict({"port": p, "protocol": proto}, **({"name": n} if n else {}))
                                   for n, p, proto in ports]
            desired.append(subset)
        endpoint_labels = dict(svc["metadata"].get("labels") or {})
        if svc["spec"].get("clusterIP") == "None":
            endpoint_labels["service.kubernetes.io/headless"] = ""
        if current is None:
            body = {"metadata": {"name": name, "namespace": ns, "labels": endpoint_labels}}
            if desired:
                body["subsets"] = desired
            self.store.create(ENDPOINTS, body, echo=False)
        elif current.get("subsets", []) != desired or (current["metadata"].get("labels") or {}) != endpoint_labels:
            def apply(ep: dict) -> None:
                ep["metadata"]["labels"] = endpoint_labels
                if desired:
                    ep["subsets"] = desired
                else:
                    ep.pop("subsets", None)
            self.store.mutate(ENDPOINTS, ns, name, apply, echo=False)
