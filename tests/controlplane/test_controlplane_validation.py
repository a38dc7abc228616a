"""The real API server refuses each invalid manifest of the reference table with a 422 naming the field."""
from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from invalid_manifests import CASES, VALID, collection_path

NAMESPACE = "validation"


@pytest.fixture(scope="module")
def namespace(api_client):
    from kubernetes.client import CoreV1Api

    CoreV1Api(api_client).create_namespace({"metadata": {"name": NAMESPACE}})
    return NAMESPACE


def dry_run_create(api_client, manifest: dict, namespace: str) -> ApiException | None:
    """POST ?dryRun=All: nothing is stored, every validation and admission step runs."""
    try:
        api_client.call_api(collection_path(manifest, namespace), "POST", body=manifest,
                            query_params=[("dryRun", "All")], header_params={"Content-Type": "application/json"},
                            response_types_map={"201": "object", "200": "object"}, auth_settings=["BearerToken"])
    except ApiException as e:
        return e
    return None


def test_the_table_has_at_least_40_cases_of_distinct_mistakes():
    assert len(CASES) >= 40
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id, manifest, fields", CASES, ids=[c[0] for c in CASES])
def test_invalid_manifest_is_refused_naming_the_field(api_client, namespace, case_id, manifest, fields):
    error = dry_run_create(api_client, manifest, namespace)
    assert error is not None, f"{case_id}: accepted"
    status = json.loads(error.body)
    assert (error.status, status["reason"]) == (422, "Invalid"), status
    assert {cause["field"] for cause in status["details"]["causes"]} == fields, status["details"]["causes"]


@pytest.mark.parametrize("manifest", VALID, ids=[m["kind"] for m in VALID])
def test_the_unbroken_base_passes_the_same_dry_run(api_client, namespace, manifest):
    """The harness itself: each base object of the table is accepted, so each refusal is the one mistake."""
    error = dry_run_create(api_client, manifest, namespace)
    assert error is None, error.body


def test_node_port_range_is_checked_by_the_allocator_only(api_client, namespace):
    """The real API server accepts a nodePort outside 30000-32767 in a dry run (the allocator does not run)
    and refuses it on a real create: kubesim must not be held to refusing it in a dry run."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "low-node-port"},
               "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80, "nodePort": 80}]}}
    assert dry_run_create(api_client, service, namespace) is None
    try:
        api_client.call_api(collection_path(service, namespace), "POST", body=service,
                            header_params={"Content-Type": "application/json"},
                            response_types_map={"201": "object"}, auth_settings=["BearerToken"])
    except ApiException as e:
        status = json.loads(e.body)
    else:
        pytest.fail("a Service with nodePort 80 was created")
    assert (status["code"], [c["field"] for c in status["details"]["causes"]]) == (422, ["spec.ports[0].nodePort"])
    assert "provided port is not in the valid range. The range of valid ports is 30000-32767" in status["message"]
