"""A minimal valid manifest for every resource type kubesim serves, keyed by storage key."""
from __future__ import annotations

POD_SPEC = {"containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}
TEMPLATE = {"metadata": {"labels": {"app": "demo"}}, "spec": POD_SPEC}
SELECTOR = {"matchLabels": {"app": "demo"}}

MANIFESTS: dict[str, dict] = {
    "namespaces": {"apiVersion": "v1", "kind": "Namespace"},
    "nodes": {"apiVersion": "v1", "kind": "Node", "spec": {}},
    "pods": {"apiVersion": "v1", "kind": "Pod", "spec": POD_SPEC},
    "services": {"apiVersion": "v1", "kind": "Service",
                 "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    "endpoints": {"apiVersion": "v1", "kind": "Endpoints",
                  "subsets": [{"addresses": [{"ip": "127.0.0.9"}], "ports": [{"port": 80}]}]},
    "configmaps": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}},
    "secrets": {"apiVersion": "v1", "kind": "Secret", "stringData": {"k": "v"}},
    "events": {"apiVersion": "v1", "kind": "Event", "reason": "Test", "message": "hello", "type": "Normal",
               "involvedObject": {"kind": "Pod", "name": "x", "namespace": "default"}},
    "serviceaccounts": {"apiVersion": "v1", "kind": "ServiceAccount"},
    "persistentvolumeclaims": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                               "spec": {"accessModes": ["ReadWriteOnce"],
                                        "resources": {"requests": {"storage": "1Gi"}}}},
    "persistentvolumes": {"apiVersion": "v1", "kind": "PersistentVolume",
                          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                   "hostPath": {"path": "/tmp/pv"}}},
    "apps/deployments": {"apiVersion": "apps/v1", "kind": "Deployment",
                         "spec": {"replicas": 1, "selector": SELECTOR, "template": TEMPLATE}},
    "apps/replicasets": {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                         "spec": {"replicas": 1, "selector": SELECTOR, "template": TEMPLATE}},
    "apps/statefulsets": {"apiVersion": "apps/v1", "kind": "StatefulSet",
                          "spec": {"replicas": 1, "serviceName": "demo", "selector": SELECTOR,
                                   "template": TEMPLATE}},
    "apps/controllerrevisions": {"apiVersion": "apps/v1", "kind": "ControllerRevision", "revision": 1,
                                 "data": {"spec": {}}},
    "apps/daemonsets": {"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "policy/poddisruptionbudgets": {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                    "spec": {"minAvailable": 1, "selector": SELECTOR}},
    "coordination.k8s.io/leases": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                   "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}},
    "discovery.k8s.io/endpointslices": {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                        "addressType": "IPv4",
                                        "endpoints": [{"addresses": ["127.0.0.9"]}], "ports": [{"port": 80}]},
    "storage.k8s.io/storageclasses": {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                      "provisioner": "kubesim.io/test"},
    "events.k8s.io/events": {"apiVersion": "events.k8s.io/v1", "kind": "Event", "reason": "Test",
                             "note": "hello", "type": "Normal", "action": "Testing",
                             "reportingController": "tests", "reportingInstance": "tests-1",
                             "eventTime": "2026-01-01T00:00:00.000000Z",
                             "regarding": {"kind": "Pod", "name": "x", "namespace": "default"}},
}


def manifest(key: str, name: str, **metadata) -> dict:
    import copy
    obj = copy.deepcopy(MANIFESTS[key])
    obj["metadata"] = {"name": name, **metadata}
    return obj
