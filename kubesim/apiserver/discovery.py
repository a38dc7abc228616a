"""Discovery documents (/api, /apis, /api/v1, /apis/<g>/<v>) built from kubesim/resources.py, in the
legacy form and, for clients that ask for it, the aggregated apidiscovery.k8s.io/v2 form."""
from __future__ import annotations

from ..resources import by_group_version, groups

# Subresource -> (verbs, kind, group, version); group/version None: the parent's.
SUBRESOURCES = {
    "status": (("get", "patch", "update"), None, None, None),
    "scale": (("get", "patch", "update"), "Scale", "autoscaling", "v1"),
    "eviction": (("create",), "Eviction", "policy", "v1"),
    "binding": (("create",), "Binding", "", "v1"),
    "log": (("get",), "Pod", "", "v1"),
    "exec": (("create", "get"), "PodExecOptions", "", "v1"),
    "portforward": (("create", "get"), "PodPortForwardOptions", "", "v1"),
    "attach": (("create", "get"), "PodAttachOptions", "", "v1"),
    "finalize": (("update",), None, None, None),
}


def api_versions(server_address: str) -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group(name: str, versions: list[str]) -> dict:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group(name, versions) for name, versions in groups().items()]}


def api_group(name: str) -> dict | None:
    versions = groups().get(name)
    return dict(_group(name, versions), kind="APIGroup", apiVersion="v1") if versions else None


def api_resource_list(group: str, version: str) -> dict | None:
    types = by_group_version(group, version)
    if not types:
        return None
    resources = []
    for rt in types.values():
        entry = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
                 "verbs": list(rt.verbs)}
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        for sub in rt.subresources:
            verbs, kind, sub_group, sub_version = SUBRESOURCES[sub]
            sub_entry = {"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                         "kind": kind or rt.kind, "verbs": list(verbs)}
            if sub_group is not None:
                sub_entry.update(group=sub_group, version=sub_version)
            resources.append(sub_entry)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


# ---- aggregated discovery (apidiscovery.k8s.io/v2), what kubectl 1.32 asks for first ----------------
AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def wants_aggregated(accept: str) -> bool:
    return any("as=APIGroupDiscoveryList" in part and "v=v2" in part.replace(" ", "").split(";")
               for part in accept.split(","))


def _resource_discovery(rt) -> dict:
    entry = {"resource": rt.plural, "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
             "scope": "Namespaced" if rt.namespaced else "Cluster", "singularResource": rt.singular,
             "verbs": list(rt.verbs)}
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    subresources = []
    for sub in rt.subresources:
        verbs, kind, sub_group, sub_version = SUBRESOURCES[sub]
        subresources.append({"subresource": sub, "verbs": list(verbs),
                             "responseKind": {"group": rt.group if sub_group is None else sub_group,
                                              "version": sub_version or rt.version, "kind": kind or rt.kind}})
    if subresources:
        entry["subresources"] = subresources
    return entry


def aggregated_discovery(core: bool) -> dict:
    """/api (core) or /apis as an APIGroupDiscoveryList."""
    names = [""] if core else list(groups())
    items = []
    for name in names:
        versions = ["v1"] if core else groups()[name]
        metadata = {"creationTimestamp": None} if core else {"name": name, "creationTimestamp": None}
        items.append({"metadata": metadata, "versions": [
            {"version": version, "freshness": "Current",
             "resources": [_resource_discovery(rt) for rt in by_group_version(name, version).values()]}
            for version in versions]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
            "items": items}
