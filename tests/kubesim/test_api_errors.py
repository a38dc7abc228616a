"""Bad input gets a Status with the right code, never a 500, and the server keeps serving."""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from kubesim.resources import CONFIGMAPS

from manifests import manifest
from api_harness import api, client  # noqa: F401  (fixtures)


def request(api, method: str, path: str, body: bytes | str | None = None,
            content_type: str = "application/json", accept: str = "application/json") -> tuple[int, dict]:
    parts = urlsplit(api.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    data = body.encode() if isinstance(body, str) else body
    conn.request(method, path, body=data, headers={"Content-Type": content_type, "Accept": accept})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, json.loads(raw) if raw else {}


BAD_REQUESTS = [
    ("POST", "/api/v1/namespaces/default/configmaps", "{not json", "application/json", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps", "[1, 2]", "application/json", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps", "a: [b", "application/yaml", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps", '{"kind":"Secret","apiVersion":"v1","metadata":{"name":"x"}}',
     "application/json", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps", '{"metadata":{"name":"x","namespace":"other"}}',
     "application/json", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps", '{"metadata":{"name":"x"},"data":"notamap"}',
     "application/json", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps", '{"metadata":"x"}', "application/json", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps", "k8s\x00garbage", "application/vnd.kubernetes.protobuf",
     400, "BadRequest"),
    ("PUT", "/api/v1/namespaces/default/configmaps/cm", '{"metadata":{"name":"other"}}', "application/json",
     400, "BadRequest"),
    ("PATCH", "/api/v1/namespaces/default/configmaps/cm", "{}", "text/plain", 415, "UnsupportedMediaType"),
    ("PATCH", "/api/v1/namespaces/default/configmaps/cm", "{bad", "application/merge-patch+json", 400,
     "BadRequest"),
    ("PATCH", "/api/v1/namespaces/default/configmaps/cm", '{"op":"add"}', "application/json-patch+json", 400,
     "BadRequest"),
    ("PATCH", "/api/v1/namespaces/default/configmaps/cm", '[{"op":"test","path":"/data/k","value":"no"}]',
     "application/json-patch+json", 422, "Invalid"),
    ("PATCH", "/api/v1/namespaces/default/configmaps/cm", "kind: ConfigMap", "application/apply-patch+yaml", 400,
     "BadRequest"),
    ("PATCH", "/api/v1/namespaces/default/configmaps/cm?fieldManager=me", "x: [", "application/apply-patch+yaml",
     400, "BadRequest"),
    ("DELETE", "/api/v1/namespaces/default/configmaps/cm", '{"propagationPolicy":"Sideways"}', "application/json",
     422, "Invalid"),
    ("DELETE", "/api/v1/namespaces/default/configmaps/cm", "{nope", "application/json", 400, "BadRequest"),
    ("GET", "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20(b", None, "application/json", 400,
     "BadRequest"),
    ("GET", "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=abc", None, "application/json", 400,
     "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps?dryRun=Sometimes", '{"metadata":{"name":"x"}}',
     "application/json", 400, "BadRequest"),
    ("POST", "/api/v1/namespaces/default/configmaps/cm", "{}", "application/json", 405, "MethodNotAllowed"),
    ("DELETE", "/api/v1/namespaces", None, "application/json", 405, "MethodNotAllowed"),
    ("GET", "/api/v1/namespaces/default/widgets", None, "application/json", 404, "NotFound"),
    ("GET", "/apis/nope.example.com/v1", None, "application/json", 404, "NotFound"),
    ("GET", "/api/v1/namespaces/default/configmaps/cm/scale", None, "application/json", 404, "NotFound"),
]


@pytest.mark.parametrize("method,path,body,content_type,code,reason", BAD_REQUESTS)
def test_bad_requests_get_a_status(api, method, path, body, content_type, code, reason):
    request(api, "POST", "/api/v1/namespaces/default/configmaps", json.dumps(manifest("configmaps", "cm")))
    status, response = request(api, method, path, body, content_type)
    assert (status, response.get("kind"), response.get("reason"), response.get("code")) == \
        (code, "Status", reason, code), response
    assert request(api, "GET", "/api/v1/namespaces/default/configmaps/cm")[0] == 200  # still serving
    assert all(r["status"] < 500 for r in api.server.request_log)


def test_not_found_and_already_exists(api, client):
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException
    core = k8s.CoreV1Api(client)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", "default")
    status = json.loads(missing.value.body)
    assert missing.value.status == 404 and status["message"] == 'configmaps "nope" not found'
    assert status["details"] == {"name": "nope", "kind": "configmaps"}
    core.create_namespaced_config_map("default", manifest("configmaps", "cm"))
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map("default", manifest("configmaps", "cm"))
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_config_map("ghost", manifest("configmaps", "cm"))
    assert no_namespace.value.status == 404
    assert json.loads(no_namespace.value.body)["message"] == 'namespaces "ghost" not found'


def test_unknown_fields_warn_by_default_and_fail_when_strict(api):
    body = json.dumps({"metadata": {"name": "cm"}, "data": {"a": "b"}, "bogus": 1})
    parts = urlsplit(api.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/api/v1/namespaces/default/configmaps", body=body,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    assert response.status == 201 and response.getheader("Warning") == '299 - "unknown field \\"bogus\\""'
    assert "bogus" not in api.store.get(CONFIGMAPS, "default", "cm")  # dropped like the real decoder does
    status, strict = request(api, "POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
                             body.replace('"cm"', '"cm2"'))
    assert status == 400 and strict["message"] == 'strict decoding error: unknown field "bogus"'


def test_api_faults_are_served(api):
    class Faults:
        def api_fault(self, verb, resource):
            from kubesim import errors
            return errors.ApiError(503, "ServiceUnavailable", "injected") if resource == "configmaps" else None

        def api_latency(self, verb, resource):
            return 0.2 if resource == "secrets" else 0

    api.server.faults = Faults()
    status, body = request(api, "GET", "/api/v1/namespaces/default/configmaps")
    assert (status, body["reason"], body["message"]) == (503, "ServiceUnavailable", "injected")
    assert request(api, "GET", "/api/v1/namespaces/default/secrets")[0] == 200
    assert api.server.request_log[-1]["ms"] >= 200 and api.server.request_log[-1]["verb"] == "list"


ODD_VALUES = [None, 1, -1, 1.5, True, "x", [], {}, [1], [{}], {"a": None}, {"name": 3}, {"$patch": "delete"},
              [{"$patch": "replace"}], {"$retainKeys": 5}, {"$deleteFromPrimitiveList/x": 3}]
PATCH_TYPES = ["application/merge-patch+json", "application/strategic-merge-patch+json",
               "application/apply-patch+yaml", "application/json-patch+json"]


def _damaged(value, rng, depth=0):
    """value with one nested field or item replaced by an odd value."""
    if isinstance(value, (dict, list)) and value and depth < 5:
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = rng.choice(keys)
        value[key] = rng.choice(ODD_VALUES) if rng.random() < 0.5 else _damaged(value[key], rng, depth + 1)
    return value


def test_damaged_bodies_never_get_a_server_error(api):
    import random

    from kubesim.resources import BY_KEY
    from manifests import MANIFESTS
    from test_api_crud import path

    rng = random.Random(1)
    for key in sorted(MANIFESTS):
        rt = BY_KEY[key]
        ns = "default" if rt.namespaced else None
        request(api, "POST", path(rt, ns), json.dumps(manifest(key, "base")))
        for i in range(12):
            method = rng.choice(["POST", "PUT", "PATCH", "PATCH", "DELETE"])
            body = _damaged(manifest(key, "base" if method == "PUT" else f"f{i}"), rng)
            url = path(rt, ns) if method == "POST" else path(rt, ns, "base", rng.choice([None, *rt.subresources]))
            content_type = rng.choice(PATCH_TYPES) if method == "PATCH" else "application/json"
            if content_type == "application/json-patch+json":
                body = [{"op": rng.choice(["add", "replace", "remove"]), "value": rng.choice(ODD_VALUES),
                         "path": rng.choice(["/spec", "/metadata", "/metadata/labels", "/spec/containers/0"])}]
            elif content_type == "application/apply-patch+yaml":
                url += "?fieldManager=fuzz&force=true"
            elif method == "DELETE":
                body = _damaged({"gracePeriodSeconds": 0, "preconditions": {"uid": "x"}, "dryRun": ["All"]}, rng)
            status, response = request(api, method, url, json.dumps(body), content_type)
            assert status < 500, (method, url, content_type, body, response)
            assert response.get("kind") != "Status" or response.get("code") == status


def test_a_self_subject_access_review_is_answered_allowed_and_not_stored(api, client):
    """kubesim authorizes every request, and says so to a client that asks (k8smove's maintenance plan does);
    a review that names neither kind of attributes is refused as kube-apiserver refuses it."""
    from kubernetes.client import AuthorizationV1Api

    review = AuthorizationV1Api(client).create_self_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {
            "namespace": "kube-system", "verb": "create", "resource": "pods", "subresource": "eviction"}}})
    assert review.status.allowed is True and review.status.reason == "kubesim authorizes every request: it has no RBAC"
    assert review.spec.resource_attributes.namespace == "kube-system"
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    code, status = request(api, "POST", path, '{"kind": "SelfSubjectAccessReview", "spec": {}}')
    assert (code, status["reason"]) == (422, "Invalid") and "exactly one of nonResourceAttributes or " \
        "resourceAttributes must be specified" in status["message"], status
    assert request(api, "GET", path)[0] == 405
    entry = api.server.request_log[-3]
    assert (entry["verb"], entry["resource"], entry["namespace"], entry["status"]) == (
        "create", "authorization.k8s.io/selfsubjectaccessreviews", None, 201)
