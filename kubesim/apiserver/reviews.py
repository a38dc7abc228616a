"""SelfSubjectAccessReview (authorization.k8s.io/v1): "may I do this?", which every authenticated identity may ask
a real API server (ClusterRole system:basic-user). kubesim's API server authorizes every request (it has no RBAC),
so it answers allowed, as a kube-apiserver with --authorization-mode=AlwaysAllow does; the review is not stored."""
from __future__ import annotations

import json

from .. import errors

GROUP, VERSION, RESOURCE = "authorization.k8s.io", "v1", "selfsubjectaccessreviews"
KEY = f"{GROUP}/{RESOURCE}"   # the request log's resource, as for the stored kinds
ALLOWED_REASON = "kubesim authorizes every request: it has no RBAC"


def is_review(group: str, version: str, rest: list[str]) -> bool:
    return (group, version, rest) == (GROUP, VERSION, [RESOURCE])


def self_subject_access_review(method: str, body: bytes) -> tuple[int, dict]:
    """(HTTP code, the review with its status) for a POST; 405 for any other method, 422 for a review that
    names neither or both of resourceAttributes and nonResourceAttributes (as kube-apiserver's validation)."""
    if method != "POST":
        raise errors.method_not_allowed("the server does not allow this method on the requested resource")
    try:
        review = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.bad_request(f"the object provided is unrecognized or malformed: {e}") from e
    if not isinstance(review, dict) or not isinstance(review.get("spec"), dict):
        raise errors.bad_request("the object provided is unrecognized or malformed: a SelfSubjectAccessReview "
                                 "with a spec is expected")
    spec = review["spec"]
    if (spec.get("resourceAttributes") is None) == (spec.get("nonResourceAttributes") is None):
        raise errors.invalid("SelfSubjectAccessReview", "", [{
            "reason": "FieldValueInvalid", "field": "spec.resourceAttributes",
            "message": 'Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be '
                       'specified'}], GROUP)
    answer = {"kind": "SelfSubjectAccessReview", "apiVersion": f"{GROUP}/{VERSION}",
              "metadata": {"creationTimestamp": None}, "spec": spec,
              "status": {"allowed": True, "reason": ALLOWED_REASON}}
    return 201, answer
