"""kubesim.remote.RemoteStore against the real API server: informers (list, watch, resume, relist on 410 Gone)
producing kubesim.store.Events, and the Store calls the kubelet makes (create, find, snapshot, status PUT guarded
by resourceVersion, mutate with 409 retries, remove)."""
from __future__ import annotations

import json
import queue
import ssl
import threading
import time
import urllib.request
import uuid

import pytest

from kubesim import errors
from kubesim.remote import Informed, RemoteStore
from kubesim.resources import CONFIGMAPS, NAMESPACES, PODS, ResourceType
from kubesim.store import Event


# Not one of kubesim's resources; its watches bypass the API server's watch cache (conftest.py).
PODTEMPLATES = ResourceType("", "v1", "PodTemplate", "podtemplates", True)


def template(name: str, namespace: str, v: str | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "labels": {"v": v} if v else {}},
            "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}


@pytest.fixture(scope="module")
def admin(control_plane):
    store = RemoteStore.from_kubeconfig(control_plane.kubeconfig_path)
    yield store
    store.close()


@pytest.fixture
def namespace(admin):
    name = f"remote-{uuid.uuid4().hex[:8]}"
    admin.create(NAMESPACES, {"metadata": {"name": name}})
    yield name
    admin.delete(NAMESPACES, None, name)


@pytest.fixture
def informed(control_plane, namespace):
    """A RemoteStore informing ConfigMaps and Pods of the test's namespace, and the events it published."""
    store = RemoteStore.from_kubeconfig(control_plane.kubeconfig_path,
                                        [Informed(CONFIGMAPS, namespace), Informed(PODS, namespace)])
    events: "queue.Queue[Event]" = queue.Queue()
    store.add_listener(events.put)
    store.start()
    yield store, events
    store.close()


def events_until(events: "queue.Queue[Event]", predicate, timeout: float = 10, what: str = "event") -> Event:
    """The first published event matching predicate (earlier ones are consumed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if predicate(event):
            return event
    raise AssertionError(f"no {what} within {timeout} s")


def next_event(events: "queue.Queue[Event]", name: str, type_: str, timeout: float = 10) -> Event:
    """The next event of this type for the object called name (others are skipped)."""
    return events_until(events, lambda e: e.object["metadata"]["name"] == name and e.type == type_, timeout,
                        f"{type_} event for {name}")


def pod(name: str, namespace: str, **labels) -> dict:
    # no scheduler serves this name: kube-scheduler would otherwise write an Unschedulable condition (a new
    # resourceVersion) into the pods these tests write status to
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
            "spec": {"schedulerName": "kubesim-test-nobody", "containers": [{"name": "c", "image": "nginx"}]}}


def test_informer_lists_then_watches_into_store_events(admin, informed, namespace):
    store, events = informed
    cm = admin.create(CONFIGMAPS, {"metadata": {"name": "one", "namespace": namespace}, "data": {"k": "1"}})
    added = next_event(events, "one", "ADDED")
    assert added.resource is CONFIGMAPS and added.old is None
    assert added.object["data"] == {"k": "1"} and added.object["kind"] == "ConfigMap"
    assert added.rv == int(cm["metadata"]["resourceVersion"])

    admin.mutate(CONFIGMAPS, namespace, "one", lambda o: o["data"].update(k="2"))
    modified = next_event(events, "one", "MODIFIED")
    assert modified.old["data"] == {"k": "1"} and modified.object["data"] == {"k": "2"}
    # reads of an informed resource come from the informer, at the version the watch delivered
    assert store.find(CONFIGMAPS, namespace, "one")["data"] == {"k": "2"}
    names = [o["metadata"]["name"] for o in store.snapshot(CONFIGMAPS, namespace)[0]]
    assert "one" in names

    admin.delete(CONFIGMAPS, namespace, "one")
    deleted = next_event(events, "one", "DELETED")
    assert deleted.old["data"] == {"k": "2"}
    assert store.find(CONFIGMAPS, namespace, "one") is None


def compact(control_plane, revision: int) -> None:
    """Compact etcd's history up to revision, as the API server does every 5 minutes: older versions are gone."""
    context = ssl.create_default_context(cafile=control_plane.ca_file)
    context.load_cert_chain(control_plane.etcd_client.cert, control_plane.etcd_client.key)
    request = urllib.request.Request(f"{control_plane.etcd_url}/v3/kv/compaction", method="POST",
                                     data=json.dumps({"revision": str(revision), "physical": True}).encode())
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:
        assert resp.status == 200


def test_informer_relists_on_410_gone_and_publishes_what_it_missed(admin, control_plane, namespace):
    store = RemoteStore.from_kubeconfig(control_plane.kubeconfig_path, [Informed(PODTEMPLATES, namespace)])
    events: "queue.Queue[Event]" = queue.Queue()
    store.add_listener(events.put)
    store.start()
    try:
        admin.create(PODTEMPLATES, template("stays", namespace, "a"))
        admin.create(PODTEMPLATES, template("goes", namespace))
        next_event(events, "goes", "ADDED")
        informer = store.informers[0]
        lists = informer.relists
        # Hold the informer inside a listener, end its watch and make it resume from version 1; meanwhile it
        # misses a create, an update and a delete, and etcd compacts its history (as the API server has it do
        # every 5 minutes). The watch answers 410 Gone; the informer lists again and publishes the difference.
        held, gate = threading.Event(), threading.Event()

        def hold(event: Event) -> None:
            if event.object["metadata"]["name"] == "hold":
                held.set()
                gate.wait(30)

        store.add_listener(hold)
        admin.create(PODTEMPLATES, template("hold", namespace))
        assert held.wait(10)
        with informer.lock:
            informer.resource_version = "1"
            informer._response.shutdown()
        admin.create(PODTEMPLATES, template("new", namespace))
        admin.mutate(PODTEMPLATES, namespace, "stays", lambda o: o["metadata"].update(labels={"v": "b"}))
        admin.delete(PODTEMPLATES, namespace, "goes")
        latest = admin.create(PODTEMPLATES, template("latest", namespace))
        try:
            compact(control_plane, int(latest["metadata"]["resourceVersion"]))
        finally:
            gate.set()
        seen = []
        events_until(events, lambda e: seen.append(e) or (e.type, e.object["metadata"]["name"]) == ("DELETED", "goes"))
        by = {(e.type, e.object["metadata"]["name"]): e for e in seen}
        assert informer.relists == lists + 1
        assert by[("ADDED", "new")].old is None and ("ADDED", "latest") in by
        assert by[("DELETED", "goes")].old["metadata"]["name"] == "goes"
        stays = by[("MODIFIED", "stays")]
        assert (stays.old["metadata"]["labels"], stays.object["metadata"]["labels"]) == ({"v": "a"}, {"v": "b"})
        assert store.find(PODTEMPLATES, namespace, "goes") is None
        # and it watches again from the listed version
        admin.create(PODTEMPLATES, template("after", namespace))
        assert next_event(events, "after", "ADDED").old is None
        assert informer.relists == lists + 1
    finally:
        store.close()


def test_informer_resumes_a_watch_from_an_old_version_the_watch_cache_still_has(admin, informed, namespace):
    """The API server's watch cache replays its history instead of 410: the informer converges all the same."""
    store, events = informed
    admin.create(CONFIGMAPS, {"metadata": {"name": "seen", "namespace": namespace}})
    next_event(events, "seen", "ADDED")
    informer = next(i for i in store.informers if i.rt is CONFIGMAPS)
    with informer.lock:
        informer.resource_version = "1"
        informer._response.shutdown()  # the informer resumes from version 1
    admin.mutate(CONFIGMAPS, namespace, "seen", lambda o: o.update(data={"k": "2"}))
    admin.create(CONFIGMAPS, {"metadata": {"name": "later", "namespace": namespace}})
    next_event(events, "later", "ADDED")
    assert store.find(CONFIGMAPS, namespace, "seen")["data"] == {"k": "2"}
    # a replayed ADDED of an object the informer already holds is published as MODIFIED, never a second ADDED
    assert [o["metadata"]["name"] for o in store.snapshot(CONFIGMAPS, namespace)[0]].count("seen") == 1


def test_status_put_keeps_metadata_and_is_guarded_by_resource_version(admin, informed, namespace):
    store, events = informed
    created = admin.create(PODS, pod("p", namespace, app="web", tier="front"))
    cached = next_event(events, "p", "ADDED").object
    status = {"phase": "Pending", "conditions": [{"type": "PodReadyToStartContainers", "status": "False"}],
              "hostIP": "127.0.1.1"}
    # what the kubelet sends: name, namespace, resourceVersion and the status
    store.update(PODS, {"metadata": {"name": "p", "namespace": namespace,
                                     "resourceVersion": cached["metadata"]["resourceVersion"]},
                        "status": status}, subresource="status")
    written = admin.get(PODS, namespace, "p")
    assert written["status"]["hostIP"] == "127.0.1.1"
    assert written["metadata"]["labels"] == {"app": "web", "tier": "front"}  # a status PUT must not drop labels
    assert written["metadata"]["uid"] == created["metadata"]["uid"]
    # the same stale resourceVersion again: the server refuses with 409, which the kubelet's sync retries
    with pytest.raises(errors.ApiError) as stale:
        store.update(PODS, {"metadata": {"name": "p", "namespace": namespace,
                                         "resourceVersion": cached["metadata"]["resourceVersion"]},
                            "status": dict(status, hostIP="127.0.1.2")}, subresource="status")
    assert stale.value.code == 409 and stale.value.reason == "Conflict"
    assert admin.get(PODS, namespace, "p")["status"]["hostIP"] == "127.0.1.1"


def test_mutate_retries_a_conflict_and_raises_404_for_a_missing_object(admin, informed, namespace):
    store, _ = informed
    admin.create(CONFIGMAPS, {"metadata": {"name": "counter", "namespace": namespace}, "data": {"n": "0"}})
    calls = []

    def bump(obj: dict) -> None:
        calls.append(obj["data"]["n"])
        if len(calls) == 1:  # someone else writes between our GET and our PUT: our PUT gets 409
            admin.mutate(CONFIGMAPS, namespace, "counter", lambda o: o["data"].update(n="10"))
        obj["data"]["n"] = str(int(obj["data"]["n"]) + 1)

    result = store.mutate(CONFIGMAPS, namespace, "counter", bump)
    assert calls == ["0", "10"]  # the second round read the other writer's value
    assert result["data"]["n"] == "11" == admin.get(CONFIGMAPS, namespace, "counter")["data"]["n"]
    with pytest.raises(errors.ApiError) as missing:
        store.mutate(CONFIGMAPS, namespace, "absent", bump)
    assert missing.value.code == 404


def test_mutate_gives_up_after_three_conflicts(admin, informed, namespace):
    store, _ = informed
    admin.create(CONFIGMAPS, {"metadata": {"name": "busy", "namespace": namespace}, "data": {"n": "0"}})
    calls = []

    def always_overtaken(obj: dict) -> None:
        calls.append(1)
        admin.mutate(CONFIGMAPS, namespace, "busy", lambda o: o["data"].update(n=str(len(calls))))
        obj["data"]["n"] = "mine"

    with pytest.raises(errors.ApiError) as conflict:
        store.mutate(CONFIGMAPS, namespace, "busy", always_overtaken)
    assert conflict.value.code == 409 and len(calls) == 3
    assert admin.get(CONFIGMAPS, namespace, "busy")["data"]["n"] == "3"


def test_create_find_snapshot_and_remove(admin, informed, namespace):
    store, events = informed
    made = store.create(CONFIGMAPS, {"metadata": {"name": "made", "namespace": namespace}, "data": {"a": "b"}})
    assert made["metadata"]["uid"] and made["kind"] == "ConfigMap"
    with pytest.raises(errors.ApiError) as exists:
        store.create(CONFIGMAPS, {"metadata": {"name": "made", "namespace": namespace}})
    assert exists.value.code == 409 and exists.value.reason == "AlreadyExists"
    next_event(events, "made", "ADDED")
    assert store.find(CONFIGMAPS, namespace, "made")["data"] == {"a": "b"}
    assert store.find(CONFIGMAPS, namespace, "never") is None
    # a resource without an informer is read with GET / LIST
    assert store.find(NAMESPACES, None, namespace)["metadata"]["name"] == namespace
    assert namespace in [o["metadata"]["name"] for o in store.snapshot(NAMESPACES)[0]]

    # remove(): an immediate delete preconditioned on the uid the informer knows
    admin.create(PODS, pod("doomed", namespace))
    first_uid = next_event(events, "doomed", "ADDED").object["metadata"]["uid"]
    removed = store.remove(PODS, namespace, "doomed")
    assert removed["metadata"]["uid"] == first_uid
    assert next_event(events, "doomed", "DELETED").object["metadata"]["uid"] == first_uid
    assert store.find(PODS, namespace, "doomed") is None
    assert store.remove(PODS, namespace, "doomed") is None  # already gone: nothing to do


def test_remove_does_not_delete_a_new_pod_of_the_same_name(admin, control_plane, namespace):
    """The uid precondition: a store whose informer still holds the old pod must not delete its successor."""
    store = RemoteStore.from_kubeconfig(control_plane.kubeconfig_path, [Informed(PODS, namespace)])
    store.start()
    gate = threading.Event()
    try:
        admin.create(PODS, pod("reused", namespace))
        deadline = time.monotonic() + 10
        while store.find(PODS, namespace, "reused") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        informer = store.informers[0]
        stale = store.find(PODS, namespace, "reused")
        store.add_listener(lambda e: gate.wait(30))  # hold the informer: it keeps seeing the old pod
        admin.delete(PODS, namespace, "reused", grace_period=0)
        admin.create(PODS, pod("reused", namespace))
        with informer.lock:
            informer.objects[(namespace, "reused")] = stale  # the old pod, as a lagging informer has it
        with pytest.raises(errors.ApiError) as refused:
            store.remove(PODS, namespace, "reused")
        assert refused.value.code == 409 and "the UID in the precondition" in refused.value.message
        assert admin.get(PODS, namespace, "reused")["metadata"]["uid"] != stale["metadata"]["uid"]
    finally:
        gate.set()
        store.close()
