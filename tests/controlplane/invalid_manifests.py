"""Invalid manifests and the field paths the real kube-apiserver (v1.36) names when it refuses them.

Each case: (id, manifest, the set of `details.causes[].field` of the 422 Invalid Status). This is the
reference table kubesim's own API server is to be held to (issue 14): the fields are what the real API
server answered, not what we expected it to.
"""
from __future__ import annotations

import copy


def _pod(container: dict | None = None, **spec) -> dict:
    c = {"name": "app", "image": "busybox:1.36", **(container or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-pod"},
            "spec": {"containers": [c], **spec}}


def _deployment(strategy: dict | None = None, template_spec: dict | None = None, **spec) -> dict:
    pod_spec = {"containers": [{"name": "app", "image": "busybox:1.36"}], **(template_spec or {})}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad-deploy"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}},
                    "template": {"metadata": {"labels": {"app": "x"}}, "spec": pod_spec}}}
    if strategy is not None:
        dep["spec"]["strategy"] = strategy
    dep["spec"].update(spec)
    return dep


def _service(ports: list | None = None, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-svc"},
            "spec": {"selector": {"app": "x"}, "ports": ports if ports is not None else [{"port": 80}], **spec}}


def _pvc(**spec) -> dict:
    base = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "bad-pvc"},
            "spec": {k: v for k, v in base.items() if v is not None}}


def _statefulset(**spec) -> dict:
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "bad-sts"},
           "spec": {"serviceName": "x", "replicas": 1, "selector": {"matchLabels": {"app": "x"}},
                    "template": {"metadata": {"labels": {"app": "x"}},
                                 "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}}}
    sts["spec"].update(spec)
    return sts


def _with_metadata(obj: dict, **metadata) -> dict:
    obj = copy.deepcopy(obj)
    obj["metadata"].update(metadata)
    return obj


def _job(**spec) -> dict:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "bad-job"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "app", "image": "busybox:1.36"}]}}}}
    job["spec"].update(spec)
    return job


LIMITS = {"cpu": "500m", "memory": "128Mi"}
BROKEN_PROBE = {"httpGet": {"path": "/", "port": 80}, "tcpSocket": {"port": 80}}

CASES: list[tuple[str, dict, set[str]]] = [
    # -- Pods: resources, policies, ports, volumes --------------------------------------------------------
    ("cpu-requests-above-limits", _pod({"resources": {"limits": LIMITS, "requests": {"cpu": "1"}}}),
     {"spec.containers[0].resources.requests"}),
    ("memory-requests-above-limits", _pod({"resources": {"limits": LIMITS, "requests": {"memory": "1Gi"}}}),
     {"spec.containers[0].resources.requests"}),
    ("negative-cpu-request", _pod({"resources": {"requests": {"cpu": "-1"}}}),
     {"spec.containers[0].resources.requests[cpu]"}),
    ("unknown-restart-policy", _pod(restartPolicy="Sometimes"), {"spec.restartPolicy"}),
    ("unknown-image-pull-policy", _pod({"imagePullPolicy": "Sometimes"}),
     {"spec.containers[0].imagePullPolicy"}),
    ("unknown-dns-policy", _pod(dnsPolicy="Sometimes"), {"spec.dnsPolicy"}),
    ("mount-of-undefined-volume", _pod({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
     {"spec.containers[0].volumeMounts[0].name"}),
    ("mount-without-path", _pod({"volumeMounts": [{"name": "data", "mountPath": ""}]},
                                volumes=[{"name": "data", "emptyDir": {}}]),
     {"spec.containers[0].volumeMounts[0].mountPath"}),
    ("two-mounts-same-path", _pod({"volumeMounts": [{"name": "a", "mountPath": "/data"},
                                                    {"name": "b", "mountPath": "/data"}]},
                                  volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]),
     {"spec.containers[0].volumeMounts[1].mountPath"}),
    ("duplicate-volume-names", _pod(volumes=[{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]),
     {"spec.volumes[1].name"}),
    ("volume-with-two-sources", _pod(volumes=[{"name": "data", "emptyDir": {}, "hostPath": {"path": "/tmp"}}]),
     {"spec.volumes[0].hostPath"}),
    ("unknown-hostpath-type", _pod(volumes=[{"name": "data", "hostPath": {"path": "/tmp", "type": "Sometimes"}}]),
     {"spec.volumes[0].hostPath.type"}),
    ("configmap-item-absolute-path", _pod(volumes=[{"name": "cfg", "configMap": {
        "name": "cfg", "items": [{"key": "a", "path": "/etc/a"}]}}]),
     {"spec.volumes[0].configMap.items[0].path"}),
    ("container-port-above-65535", _pod({"ports": [{"containerPort": 70000}]}),
     {"spec.containers[0].ports[0].containerPort"}),
    ("container-port-zero", _pod({"ports": [{"containerPort": 0}]}),
     {"spec.containers[0].ports[0].containerPort"}),
    ("host-port-above-65535", _pod({"ports": [{"containerPort": 80, "hostPort": 70000}]}),
     {"spec.containers[0].ports[0].hostPort"}),
    ("unknown-port-protocol", _pod({"ports": [{"containerPort": 80, "protocol": "ICMP"}]}),
     {"spec.containers[0].ports[0].protocol"}),
    ("duplicate-port-names", _pod({"ports": [{"name": "web", "containerPort": 80},
                                             {"name": "web", "containerPort": 81}]}),
     {"spec.containers[0].ports[1].name"}),
    ("no-containers", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-pod"},
                       "spec": {"containers": []}}, {"spec.containers"}),
    ("container-without-image", _pod({"image": ""}), {"spec.containers[0].image"}),
    ("container-name-uppercase", _pod({"name": "App"}), {"spec.containers[0].name"}),
    ("duplicate-container-names", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-pod"},
                                   "spec": {"containers": [{"name": "app", "image": "busybox"},
                                                           {"name": "app", "image": "busybox"}]}},
     {"spec.containers[1].name"}),
    ("env-name-with-equals", _pod({"env": [{"name": "A=B", "value": "x"}]}), {"spec.containers[0].env[0].name"}),
    ("env-value-and-valuefrom", _pod({"env": [{"name": "A", "value": "x", "valueFrom": {
        "fieldRef": {"fieldPath": "metadata.name"}}}]}), {"spec.containers[0].env[0].valueFrom"}),
    ("probe-with-two-handlers", _pod({"readinessProbe": BROKEN_PROBE}),
     {"spec.containers[0].readinessProbe.tcpSocket"}),
    ("liveness-success-threshold-2", _pod({"livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2}}),
     {"spec.containers[0].livenessProbe.successThreshold"}),
    ("negative-probe-period", _pod({"livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": -1}}),
     {"spec.containers[0].livenessProbe.periodSeconds"}),
    ("unknown-toleration-operator", _pod(tolerations=[{"key": "a", "operator": "Maybe", "effect": "NoSchedule"}]),
     {"spec.tolerations[0].operator"}),
    ("unknown-toleration-effect", _pod(tolerations=[{"key": "a", "operator": "Exists", "effect": "Sometimes"}]),
     {"spec.tolerations[0].effect"}),
    ("bad-node-selector-value", _pod(nodeSelector={"demo": "not a value!"}), {"spec.nodeSelector"}),
    ("negative-run-as-user", _pod(securityContext={"runAsUser": -1}), {"spec.securityContext.runAsUser"}),
    # -- metadata ---------------------------------------------------------------------------------------------
    ("bad-label-value", _with_metadata(_pod(), labels={"app": "not a value!"}), {"metadata.labels"}),
    ("bad-label-key", _with_metadata(_pod(), labels={"bad key": "x"}), {"metadata.labels"}),
    ("label-value-too-long", _with_metadata(_pod(), labels={"app": "x" * 64}), {"metadata.labels"}),
    ("pod-name-too-long", _with_metadata(_pod(), name="p" * 254), {"metadata.name"}),
    ("pod-name-uppercase", _with_metadata(_pod(), name="BadPod"), {"metadata.name"}),
    ("service-name-too-long", _with_metadata(_service(), name="s" * 64), {"metadata.name"}),
    ("annotations-too-large", _with_metadata(_pod(), annotations={"big": "x" * (256 * 1024 + 1)}),
     {"metadata.annotations"}),
    # -- Deployments ------------------------------------------------------------------------------------------
    ("recreate-with-rolling-update", _deployment({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
     {"spec.strategy.rollingUpdate"}),
    # The whole strategy is named, not spec.strategy.type.
    ("unknown-strategy-type", _deployment({"type": "BlueGreen"}), {"spec.strategy"}),
    ("max-surge-and-unavailable-zero", _deployment({"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": 0, "maxUnavailable": 0}}), {"spec.strategy.rollingUpdate.maxUnavailable"}),
    ("max-unavailable-above-100-percent", _deployment({"type": "RollingUpdate", "rollingUpdate": {
        "maxUnavailable": "150%"}}), {"spec.strategy.rollingUpdate.maxUnavailable"}),
    ("selector-not-matching-template", _deployment(selector={"matchLabels": {"app": "y"}}),
     {"spec.template.metadata.labels"}),
    ("negative-replicas", _deployment(replicas=-1), {"spec.replicas"}),
    ("template-restart-never", _deployment(template_spec={"restartPolicy": "Never"}),
     {"spec.template.spec.restartPolicy"}),
    ("negative-revision-history-limit", _deployment(revisionHistoryLimit=-1), {"spec.revisionHistoryLimit"}),
    ("progress-deadline-below-min-ready", _deployment(minReadySeconds=30, progressDeadlineSeconds=10),
     {"spec.progressDeadlineSeconds"}),
    ("template-container-port-out-of-range",
     _deployment(template_spec={"containers": [{"name": "app", "image": "busybox", "ports": [{"containerPort": -1}]}]}),
     {"spec.template.spec.containers[0].ports[0].containerPort"}),
    # -- Services ---------------------------------------------------------------------------------------------
    ("unknown-service-type", _service(type="Balancer"), {"spec.type"}),
    # targetPort defaults to port, so both are named.
    ("service-port-zero", _service([{"port": 0}]), {"spec.ports[0].port", "spec.ports[0].targetPort"}),
    ("service-target-port-out-of-range", _service([{"port": 80, "targetPort": 70000}]),
     {"spec.ports[0].targetPort"}),
    # (A nodePort outside 30000-32767 is refused only by the allocator of a real create: a dry run accepts
    # it — see test_node_port_range_is_checked_by_the_allocator_only.)
    ("service-node-port-on-cluster-ip", _service([{"port": 80, "nodePort": 30080}]), {"spec.ports[0].nodePort"}),
    ("service-unknown-protocol", _service([{"port": 80, "protocol": "ICMP"}]), {"spec.ports[0].protocol"}),
    ("service-unnamed-ports", _service([{"port": 80}, {"port": 81}]), {"spec.ports[0].name", "spec.ports[1].name"}),
    ("service-duplicate-ports", _service([{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
     {"spec.ports[1]"}),
    ("service-bad-external-ip", _service(externalIPs=["not-an-ip"]), {"spec.externalIPs[0]"}),
    ("service-unknown-session-affinity", _service(sessionAffinity="Sometimes"), {"spec.sessionAffinity"}),
    ("externalname-without-name", _service(type="ExternalName"), {"spec.externalName"}),
    # -- config, storage, other workloads ------------------------------------------------------------------
    ("configmap-bad-key", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad-cm"},
                           "data": {"bad key!": "x"}}, {"data[bad key!]"}),
    ("tls-secret-without-cert", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad-tls"},
                                 "type": "kubernetes.io/tls", "stringData": {"tls.key": "k"}}, {"data[tls.crt]"}),
    ("pvc-without-access-modes", _pvc(accessModes=None), {"spec.accessModes"}),
    ("pvc-unknown-access-mode", _pvc(accessModes=["ReadWriteSometimes"]), {"spec.accessModes"}),
    ("pvc-without-storage-request", _pvc(resources={"requests": {}}), {"spec.resources[storage]"}),
    ("statefulset-unknown-pod-management", _statefulset(podManagementPolicy="Random"),
     {"spec.podManagementPolicy"}),
    ("job-restart-always", _job(template={"spec": {"restartPolicy": "Always",
                                                   "containers": [{"name": "app", "image": "busybox"}]}}),
     {"spec.template.spec.restartPolicy"}),
    ("job-negative-completions", _job(completions=-1), {"spec.completions"}),
    ("cronjob-bad-schedule", {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "bad-cron"},
                              "spec": {"schedule": "every minute", "jobTemplate": {"spec": _job()["spec"]}}},
     {"spec.schedule"}),
    ("pdb-min-available-and-max-unavailable",
     {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "bad-pdb"},
      "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"app": "x"}}}}, {"spec"}),
    ("namespace-name-invalid", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Bad_NS"}},
     {"metadata.name"}),
]

# apiVersion/kind -> (URL prefix, plural, namespaced)
RESOURCES = {
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims", True),
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", True),
    ("apps/v1", "StatefulSet"): ("/apis/apps/v1", "statefulsets", True),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs", True),
    ("batch/v1", "CronJob"): ("/apis/batch/v1", "cronjobs", True),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets", True),
}


def collection_path(manifest: dict, namespace: str) -> str:
    prefix, plural, namespaced = RESOURCES[(manifest["apiVersion"], manifest["kind"])]
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespaced else f"{prefix}/{plural}"

# The bases the cases are made from, unbroken: each must be accepted, so a refusal above is its one mistake.
VALID = [_pod(), _deployment(), _service(), _pvc(), _statefulset(), _job(),
         {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "good-cron"},
          "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": _job()["spec"]}}},
         {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "good-cm"}, "data": {"key": "x"}}]
