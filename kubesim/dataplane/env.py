"""A container's environment as the kubelet builds it: env, envFrom and valueFrom read from the store."""
from __future__ import annotations

import base64
import re
from typing import Callable

from .. import resources
from ..store import Store

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


class ConfigError(Exception):
    """The env cannot be built yet (kubelet reason CreateContainerConfigError); retried later."""


def _decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


# Where each kind of env source reads its key/value map: (resource, decoder of the object's data).
_SOURCES = {
    "configMap": (resources.CONFIGMAPS, lambda o: dict(o.get("data") or {})),
    "secret": (resources.SECRETS, _decoded),
}


def _source_data(store: Store, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
    rt, decode = _SOURCES[kind]
    obj = store.find(rt, namespace, name)
    if obj is None:
        if optional:
            return {}
        raise ConfigError(f'{rt.singular} "{name}" not found')
    return decode(obj)


def _key_ref(store: Store, kind: str, namespace: str, ref: dict) -> str | None:
    data = _source_data(store, kind, namespace, ref["name"], ref.get("optional", False))
    if ref["key"] not in data:
        if ref.get("optional", False):
            return None
        raise ConfigError(f'couldn\'t find key {ref["key"]} in {_SOURCES[kind][0].kind} '
                          f'{namespace}/{ref["name"]}')
    return data[ref["key"]]


def field_ref(pod: dict, path: str, pod_ip: str, host_ip: str) -> str:
    """The downward API fields kubelet supports for env."""
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    values = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": pod["spec"].get("nodeName"),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
              "status.podIP": pod_ip, "status.podIPs": pod_ip, "status.hostIP": host_ip,
              "status.hostIPs": host_ip}
    return values.get(path) or ""


def expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) references to earlier variables, $$ escapes; unknown references stay as written."""
    return _REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def service_links(store: Store, namespace: str, address: Callable[[str, int], tuple[str, int]]) -> dict:
    """The Docker-link style variables kubelet gives every container for each Service of its namespace.

    address maps a clusterIP:port to where the service proxy really listens (the same on Linux)."""
    env = {}
    for service in store.snapshot(resources.SERVICES, namespace)[0]:
        spec = service.get("spec") or {}
        ports = [p for p in spec.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
        if spec.get("clusterIP") in (None, "", "None") or not ports:
            continue
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        for i, port in enumerate(ports):
            host, number = address(spec["clusterIP"], port["port"])
            url = f"tcp://{host}:{number}"
            if i == 0:
                env.update({f"{prefix}_SERVICE_HOST": host, f"{prefix}_SERVICE_PORT": str(number),
                            f"{prefix}_PORT": url})
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
            proto = f"{prefix}_PORT_{port['port']}_TCP"
            env.update({proto: url, f"{proto}_PROTO": "tcp", f"{proto}_PORT": str(number), f"{proto}_ADDR": host})
    return env


def container_env(store: Store, pod: dict, container: dict, node: str, pod_ip: str, host_ip: str,
                  links: dict[str, str]) -> dict:
    namespace = pod["metadata"]["namespace"]
    ports = container.get("ports") or []
    env: dict[str, str] = {**links, "POD_NAME": pod["metadata"]["name"], "POD_NAMESPACE": namespace,
                           "POD_IP": pod_ip, "NODE_NAME": node, "HOSTNAME": pod["metadata"]["name"]}
    if ports:
        env["PORT"] = str(ports[0]["containerPort"])
    for source in container.get("envFrom") or []:
        kind = "configMap" if "configMapRef" in source else "secret"
        ref = source[f"{kind}Ref"]
        for key, value in _source_data(store, kind, namespace, ref["name"], ref.get("optional", False)).items():
            env[source.get("prefix", "") + key] = value
    for var in container.get("env") or []:
        value_from = var.get("valueFrom")
        if value_from is None:
            env[var["name"]] = expand(var.get("value", ""), env)
        elif "fieldRef" in value_from:
            env[var["name"]] = field_ref(pod, value_from["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in value_from:
            resource = value_from["resourceFieldRef"]["resource"].split(".", 1)
            env[var["name"]] = str(((container.get("resources") or {}).get(resource[0]) or {})
                                   .get(resource[1], "0"))
        else:
            kind = "configMap" if "configMapKeyRef" in value_from else "secret"
            value = _key_ref(store, kind, namespace, value_from[f"{kind}KeyRef"])
            if value is not None:
                env[var["name"]] = value
    return env
