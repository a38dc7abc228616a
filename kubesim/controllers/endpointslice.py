"""endpointslice-controller: discovery.k8s.io EndpointSlices of every Service with a selector, with
ready/serving/terminating conditions per endpoint (terminating pods stay listed, not ready)."""
from __future__ import annotations

from .. import labels
from ..resources import ENDPOINTSLICES, PODS, SERVICES
from ..store import Event
from .base import Controller, obj_key, same_keys
from .endpoints import endpoint_ports, selected_pods, services_selecting, target_ref
from .owners import controller_ref
from .pods import is_ready, is_terminating

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100


class EndpointSliceController(Controller):
    name = "endpointslice"
    dedicated = True   # the data plane follows slices too: same latency as Endpoints

    def watches(self):
        return {SERVICES.key: same_keys, PODS.key: lambda e: services_selecting(self.cache, e),
                ENDPOINTSLICES.key: self._slice_service}

    def initial_keys(self):
        return [obj_key(s) for s in self.cache.list(SERVICES)]

    @staticmethod
    def _slice_service(event: Event):
        meta = event.object["metadata"]
        service = (meta.get("labels") or {}).get(SERVICE_NAME)
        if (meta.get("labels") or {}).get(MANAGED_BY) != CONTROLLER_NAME or not service:
            return ()
        return [(meta["namespace"], service)]

    def sync(self, key) -> None:
        ns, name = key
        svc = self.cache.get(SERVICES, ns, name)
        existing = sorted(self.cache.select(ENDPOINTSLICES, ns, labels.from_map({SERVICE_NAME: name,
                                                                                 MANAGED_BY: CONTROLLER_NAME})),
                          key=lambda s: s["metadata"]["name"])
        desired = self._desired_slices(svc) if svc is not None and svc["spec"].get("selector") else []
        for slice_, body in zip(existing, desired):
            if slice_.get("endpoints") != body["endpoints"] or slice_.get("ports") != body["ports"] \
                    or slice_["metadata"].get("labels") != body["metadata"]["labels"]:
                self.store.mutate(ENDPOINTSLICES, ns, slice_["metadata"]["name"],
                                  lambda s, body=body: s.update(endpoints=body["endpoints"], ports=body["ports"],
                                                                metadata=dict(s["metadata"], labels=body["metadata"]["labels"])))
        for body in desired[len(existing):]:
            self.store.create(ENDPOINTSLICES, body)
        for slice_ in existing[len(desired):]:
            self.store.remove(ENDPOINTSLICES, ns, slice_["metadata"]["name"])

    def _desired_slices(self, svc: dict) -> list[dict]:
        """One slice per port mapping and per 100 endpoints, in a stable order."""
        groups: dict[tuple, list[dict]] = {}
        for pod in selected_pods(self.cache, svc):
            ports = endpoint_ports(svc, pod)
            if svc["spec"].get("ports") and not ports:
                continue
            ready = is_ready(pod) and not is_terminating(pod)
            endpoint = {"addresses": [pod["status"]["podIP"]],
                        "conditions": {"ready": ready, "serving": is_ready(pod), "terminating": is_terminating(pod)},
                        "targetRef": target_ref(pod)}
            if pod["spec"].get("nodeName"):
                endpoint["nodeName"] = pod["spec"]["nodeName"]
            groups.setdefault(ports, []).append(endpoint)
        meta = svc["metadata"]
        slice_labels = dict(meta.get("labels") or {}, **{SERVICE_NAME: meta["name"], MANAGED_BY: CONTROLLER_NAME})
        slices = []
        for ports, endpoints in groups.items() or [((), [])]:
            port_list = [dict({"port": p, "protocol": proto}, name=n or "") for n, p, proto in ports]
            for start in range(0, max(1, len(endpoints)), MAX_ENDPOINTS_PER_SLICE):
                slices.append({"metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"],
                                            "labels": slice_labels,
                                            "ownerReferences": [controller_ref(svc, SERVICES)]},
                               "addressType": "IPv4", "endpoints": endpoints[start:start + MAX_ENDPOINTS_PER_SLICE],
                               "ports": port_list})
        return slices
