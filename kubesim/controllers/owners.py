"""Owner references: the one place that builds and reads them."""
from __future__ import annotations

from ..resources import ResourceType


def controller_ref(owner: dict, rt: ResourceType) -> dict:
    """The ownerReference a controller puts on what it creates (controller=true, blockOwnerDeletion)."""
    return {"apiVersion": rt.api_version, "kind": rt.kind, "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def controller_of(obj: dict) -> dict | None:
    for ref in obj["metadata"].get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def is_controlled_by(obj: dict, owner_uid: str) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref["uid"] == owner_uid


def owner_keys(obj: dict, kind: str) -> list[tuple[str, str]]:
    """(namespace, name) of the owners of this kind, for enqueueing the owner when a dependent changes."""
    ns = obj["metadata"].get("namespace", "")
    return [(ns, ref["name"]) for ref in obj["metadata"].get("ownerReferences") or () if ref.get("kind") == kind]
