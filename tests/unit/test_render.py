"""Rendering: sandboxed, strict, every value a quoted scalar, output valid against the Kubernetes schemas."""
from __future__ import annotations

import json

import pytest

from k8smove import K8sMoveError
from k8smove.params import DEPLOY_PARAMS
from k8smove.render import recorded_values, redact, render_manifests, to_yaml


@pytest.fixture
def values():
    defaults = {**{name: schema["default"] for name, schema in DEPLOY_PARAMS.items()}, "node_label": {"demo": "node1"}}
    return {key: defaults[key] for key in ("namespace", "release", "node_label", "external_ip", "port",
                                           "images", "replicas", "storage")}


def by_kind(manifests):
    return {(m["kind"], m["metadata"]["name"]) for m in manifests}


def test_renders_release_db_then_app(values):
    manifests = render_manifests(values, ["app", "db"])
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ConfigMap", "demo-k8smove"), ("Secret", "demo-db"), ("Secret", "demo-db-replication"),
        ("PersistentVolumeClaim", "demo-db"), ("Deployment", "demo-db"), ("Service", "demo-db"),
        ("Deployment", "demo-app"), ("Service", "demo")]


def test_app_rollout_placement_and_labels(values):
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in render_manifests(values, ["app", "db"])}
    app = manifests[("Deployment", "demo-app")]
    assert app["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = app["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"demo": "node1"}
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    assert app["metadata"]["labels"] == {
        "app.kubernetes.io/name": "k8smove-demo", "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "app", "app.kubernetes.io/managed-by": "k8smove"}
    db = manifests[("Deployment", "demo-db")]
    assert db["spec"]["strategy"] == {"type": "Recreate"}
    assert db["spec"]["template"]["spec"]["nodeSelector"] == {"demo": "node1"}
    assert manifests[("PersistentVolumeClaim", "demo-db")]["spec"]["storageClassName"] == "standard"
    service = manifests[("Service", "demo")]
    assert service["spec"]["externalIPs"] == ["10.192.0.1"]
    assert service["spec"]["ports"][0]["port"] == 8080
    assert manifests[("Service", "demo-db")]["spec"]["type"] == "ClusterIP"


def test_components_subset(values):
    assert by_kind(render_manifests(values, ["app"])) == {
        ("ConfigMap", "demo-k8smove"), ("Deployment", "demo-app"), ("Service", "demo")}


def test_secret_has_no_value_in_templates(values):
    secrets = [m for m in render_manifests(values, ["db"]) if m["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == ["demo-db", "demo-db-replication"]
    for secret in secrets:
        assert "data" not in secret and "stringData" not in secret
        assert secret["metadata"]["annotations"]["k8smove.io/generate-keys"] == "password"


def test_a_db_instance_and_a_standby_of_the_serving_one(values):
    """Instance 0 keeps the plain names; a move's instance n+1 is a standby seeded from the Service, which keeps
    selecting the serving instance until the switch."""
    plain = {(m["kind"], m["metadata"]["name"]): m for m in render_manifests(values, ["db"])}
    assert "initContainers" not in plain[("Deployment", "demo-db")]["spec"]["template"]["spec"]
    assert plain[("Service", "demo-db")]["spec"]["selector"]["k8smove.io/db-instance"] == "0"
    moved = {(m["kind"], m["metadata"]["name"]): m
             for m in render_manifests({**values, "db_instance": 2, "db_serving_instance": 1}, ["db"])}
    deployment = moved[("Deployment", "demo-db-2")]
    assert deployment["spec"]["selector"]["matchLabels"]["k8smove.io/db-instance"] == "2"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "demo-db-2"
    assert ("PersistentVolumeClaim", "demo-db-2") in moved
    init = pod["initContainers"][0]
    assert "pg_basebackup" in init["command"][2] and "-R -X stream" in init["command"][2]
    assert {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "demo-db-replication", "key": "password"}}} \
        in init["env"]
    assert moved[("Service", "demo-db")]["spec"]["selector"]["k8smove.io/db-instance"] == "1"
    record = json.loads(moved[("ConfigMap", "demo-k8smove")]["data"]["values.json"])
    assert record["db_instance"] == 2 and "db_serving_instance" not in record


def test_rendering_is_deterministic(values):
    assert render_manifests(values, ["app", "db"]) == render_manifests(values, ["app", "db"])


@pytest.mark.parametrize("value", [
    "x\n  hostNetwork: true",
    "x\nspec:\n  hostNetwork: true",
    "{{ 7 * 7 }}",
    "{% for x in range(3) %}y{% endfor %}",
    "\" , hostNetwork: true, \"",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
])
def test_injected_values_stay_inert(values, value):
    values["node_label"] = {"demo": value}
    values["release"] = "demo"
    manifests = render_manifests(values, ["app", "db"])
    for workload in (m for m in manifests if m["kind"] == "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"demo": value}
        assert "hostNetwork" not in pod
    assert len(manifests) == 8


def test_injected_key_stays_inert(values):
    values["node_label"] = {"demo: x\n  hostNetwork": "true"}
    app = next(m for m in render_manifests(values, ["app"]) if m["kind"] == "Deployment")
    assert app["spec"]["template"]["spec"]["nodeSelector"] == {"demo: x\n  hostNetwork": "true"}
    assert "hostNetwork" not in app["spec"]["template"]["spec"]


def test_missing_value_is_an_error(values):
    del values["external_ip"]
    with pytest.raises(K8sMoveError, match="external_ip"):
        render_manifests(values, ["app"])


def test_schema_violation_is_reported_with_the_object(values):
    values["replicas"] = "three"
    with pytest.raises(K8sMoveError, match=r"app.yaml.j2: Deployment/demo-app: spec/replicas"):
        render_manifests(values, ["app"])


def test_sandbox_refuses_unsafe_attribute(tmp_path, values):
    (tmp_path / "release.yaml.j2").write_text("x: {{ release.__class__.__mro__ }}\n")
    with pytest.raises(K8sMoveError, match="unsafe"):
        render_manifests(values, [], template_dir=tmp_path)


def test_template_with_secret_data_is_refused(tmp_path, values):
    (tmp_path / "release.yaml.j2").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n")
    with pytest.raises(K8sMoveError, match="must not contain secret data"):
        render_manifests(values, [], template_dir=tmp_path)


def test_redact_and_yaml_hide_secret_values():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "aHVudGVyMg=="}}
    assert redact(secret)["data"] == {"password": "<redacted>"}
    assert "aHVudGVyMg" not in to_yaml([secret])


def test_recorded_values_leave_placement_to_the_workloads(values):
    assert "node_label" not in recorded_values(values)
