"""The kubelet of one node: registers the Node, renews its Lease, and runs the pods bound to it through the
ContainerRuntime, reporting their status the way the real kubelet does."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .. import errors
from ..addresses import pod_cidr
from ..resources import LEASES, NODES, PODS, PVCS, PVS
from ..runtime import PodSandbox, container_id, restart_after_exit
from ..store import Event, now_rfc3339
from .base import Context, Controller, log
from .pods import is_finished, set_condition
from .quantity import parse_quantity

COMPONENT = "kubelet"
LEASE_NAMESPACE = "kube-node-lease"
MAX_PULL_BACKOFF = 300.0
ATTACH_COMPONENT = "attachdetach-controller"
ATTACH_RETRY_SECONDS = 0.5

# The node conditions a healthy kubelet posts, as upstream words them.
HEALTHY_NODE_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)

# Pod lifecycle stages (KWOK-style): the phase each shows, whether the sandbox exists, and the
# waiting reason its containers report while the kubelet is in it.
CREATING, PULL_FAILED, PULL_BACKOFF, RUNNING, TERMINATING = \
    "ContainerCreating", "ErrImagePull", "ImagePullBackOff", "Running", "Terminating"
STAGES = {
    #              phase      sandbox ready  container waiting reason
    CREATING:     ("Pending", False,         "ContainerCreating"),
    PULL_FAILED:  ("Pending", True,          "ErrImagePull"),
    PULL_BACKOFF: ("Pending", True,          "ImagePullBackOff"),
    RUNNING:      ("Running", True,          None),
    TERMINATING:  (None,      True,          None),
}


@dataclass
class PodRecord:
    """What this kubelet remembers of a pod it runs (by uid)."""
    uid: str
    key: tuple[str, str]
    stage: str = CREATING
    start_at: float = 0.0                 # monotonic time the containers start (end of ContainerCreating)
    ip: str | None = None
    sandbox: PodSandbox | None = None
    started: dict[str, tuple[str, float]] = field(default_factory=dict)  # container -> (rfc3339, monotonic)
    pull_failures: int = 0
    pull_message: str = ""
    signature: tuple = ()
    attached_at: float | None = None      # monotonic time its network volumes are attached here
    reported: dict[str, tuple] = field(default_factory=dict)   # container -> last state seen, for events


class Kubelet(Controller):
    name = "kubelet"

    def __init__(self, ctx: Context, node: str, index: int) -> None:
        super().__init__(ctx)
        self.name = f"kubelet-{node}"
        self.node = node
        self.index = index
        self.internal_ip = f"127.0.{ctx.config.network_id}.{index}"
        self.runtime = ctx.runtime
        self._records: dict[str, PodRecord] = {}          # uid -> record
        self._uid_by_key: dict[tuple[str, str], str] = {}
        self._ips_in_use: set[str] = set()
        self._next_ip = 1
        self.pod_cidr = pod_cidr(ctx.config.network_id, index, real=ctx.config.control_plane == "real")
        self._pulled_images: set[str] = set()
        self.api_port = 10250                  # where the kubelet API listens (kubesim.kubeletapi on the real control plane)
        self.declared_features: tuple[str, ...] = ()
        self._down = False
        self._last_heartbeat = 0.0
        self._stopping_threads: list[threading.Thread] = []

    # ---- wiring ------------------------------------------------------------------------------------
    def initial_keys(self):
        self._register_node()
        self._tick()
        return [("pod", *k) for k in ((p["metadata"]["namespace"], p["metadata"]["name"])
                                      for p in self.cache.pods_on_node(self.node))]

    def _tick(self) -> None:
        """Cheap periodic check (shared timer thread): fault state flips and heartbeat due."""
        if self._stopped:
            return
        down = bool(self.ctx.fault("node_not_ready", False, self.node))
        due = time.monotonic() - self._last_heartbeat >= self.config.heartbeat_seconds
        if down != self._down or (due and not down):
            self.enqueue(("node",))
        self.ctx.timers.call_later(min(0.5, self.config.heartbeat_seconds), self._tick)

    def running_records(self) -> list[PodRecord]:
        return [r for r in list(self._records.values()) if r.stage == RUNNING]

    def poll_runtime(self) -> None:
        """Called by the shared poller: enqueue pods whose container states or probe verdicts changed."""
        if self._down:
            return
        for record in self.running_records():
            sandbox = self.runtime.status(record.uid)
            if _signature(sandbox) != record.signature:
                self.enqueue(("pod", *record.key))

    def sync(self, key) -> None:
        if key[0] == "node":
            self._sync_node()
        else:
            self._sync_pod(key[1], key[2])

    # ---- node --------------------------------------------------------------------------------------
    def _register_node(self) -> None:
        node = self.store.find(NODES, None, self.node)
        announced = _condition_reasons(node) if node is not None else set()
        if node is None:
            node = self.store.create(NODES, self._node_object())   # with conditions: never half-registered
        self.events.normal(node, "Starting", "Starting kubelet.", COMPONENT, self.node)
        self.events.normal(node, "NodeAllocatableEnforced", "Updated Node Allocatable limit across pods", COMPONENT,
                           self.node)
        self._post_node_status(node, announced)

    def _node_object(self) -> dict:
        return {
            "metadata": {"name": self.node,
                         "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": self.node,
                                    "kubernetes.io/os": "linux"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                         "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": self._healthy_status({"images": []}, now_rfc3339()),
        }

    def _healthy_status(self, status: dict, stamp: str) -> dict:
        """What a working kubelet reports: its resources, addresses, versions and healthy conditions."""
        cfg = self.config
        status.update({
            "capacity": self._resources(), "allocatable": self._resources(),
            "addresses": [{"type": "InternalIP", "address": self.internal_ip}, {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.api_port}},
            "nodeInfo": {"machineID": f"kubesim-{self.node}", "systemUUID": f"kubesim-{self.node}",
                         "bootID": f"kubesim-{self.node}", "kernelVersion": "6.1.0-kubesim",
                         "osImage": "kubesim (simulated Linux)",
                         "containerRuntimeVersion": "kubesim://" + cfg.kubernetes_version.lstrip("v"),
                         "kubeletVersion": cfg.kubernetes_version, "kubeProxyVersion": cfg.kubernetes_version,
                         "operatingSystem": "linux", "architecture": "amd64"}})
        status.setdefault("images", [])
        if self.declared_features:
            status["declaredFeatures"] = list(self.declared_features)
        for type_, value, reason, message in HEALTHY_NODE_CONDITIONS:
            set_condition(status, type_, value, reason, message, stamp)
        for c in status["conditions"]:
            c["lastHeartbeatTime"] = stamp
        return status

    def _resources(self) -> dict:
        return {"cpu": str(self.config.node_cpu), "memory": str(self.config.node_memory),
                "pods": str(self.config.max_pods), "ephemeral-storage": "100Gi",
                "hugepages-1Gi": "0", "hugepages-2Mi": "0"}

    def _post_node_status(self, node: dict, announced: set[str]) -> None:
        """Healthy conditions and a fresh heartbeat; a "status is now" event for each condition that became so
        (``announced``: the condition reasons the node showed before)."""
        stamp = now_rfc3339()
        node = self.store.mutate(NODES, None, node["metadata"]["name"],
                                 lambda n: self._healthy_status(n.setdefault("status", {}), stamp), subresource="status")
        for _, _, reason, _ in HEALTHY_NODE_CONDITIONS:
            if reason not in announced:
                event_reason = "NodeReady" if reason == "KubeletReady" else reason.replace("Kubelet", "Node")
                self.events.normal(node, event_reason, f"Node {self.node} status is now: {event_reason}", COMPONENT,
                                   self.node)
        self._renew_lease()

    def _renew_lease(self) -> None:
        self._last_heartbeat = time.monotonic()
        renew = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".%06dZ" % (time.time() % 1 * 1e6)
        node = self.cache.get(NODES, None, self.node) or self.store.find(NODES, None, self.node)
        try:
            self.store.mutate(LEASES, LEASE_NAMESPACE, self.node, lambda l: l["spec"].update(renewTime=renew))
        except errors.ApiError as e:
            if e.code != 404:
                raise
            lease = {"metadata": {"name": self.node, "namespace": LEASE_NAMESPACE},
                     "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": renew}}
            if node is not None:
                lease["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.node,
                                                         "uid": node["metadata"]["uid"]}]
            self.store.create(LEASES, lease)

    def _sync_node(self) -> None:
        down = bool(self.ctx.fault("node_not_ready", False, self.node))
        if down:
            self._down = True  # a dead kubelet posts nothing; the nodelifecycle controller notices
            return
        came_back = self._down
        self._down = False
        node = self.store.find(NODES, None, self.node)
        if node is None:
            self._register_node()
        else:
            self._post_node_status(node, _condition_reasons(node))
        if came_back:
            self.enqueue_all(("pod", p["metadata"]["namespace"], p["metadata"]["name"])
                             for p in self.cache.pods_on_node(self.node))

    # ---- pods --------------------------------------------------------------------------------------
    def _sync_pod(self, namespace: str, name: str) -> None:
        if self._down:
            return
        pod = self.cache.get(PODS, namespace, name)
        uid = self._uid_by_key.get((namespace, name))
        if uid is not None and (pod is None or pod["metadata"]["uid"] != uid
                                or pod["spec"].get("nodeName") != self.node):
            self._forget(uid)  # removed (or replaced) behind our back: force-deleted
        if pod is None or pod["spec"].get("nodeName") != self.node:
            return
        record = self._records.get(pod["metadata"]["uid"])
        if record is None and (sandbox := self.runtime.status(pod["metadata"]["uid"])) is not None:
            record = self._adopt(pod, sandbox)
        if record is None:
            if pod["metadata"].get("deletionTimestamp") or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                if pod["metadata"].get("deletionTimestamp"):
                    self.store.remove(PODS, namespace, name)
                return
            record = self._admit(pod)
        if pod["metadata"].get("deletionTimestamp"):
            self._terminate(pod, record)
        elif record.stage == CREATING:
            self._advance_creating(pod, record)
        elif record.stage in (PULL_FAILED, PULL_BACKOFF):
            self._retry_pull(pod, record)
        elif record.stage == RUNNING:
            self._report_running(pod, record)

    def _admit(self, pod: dict) -> PodRecord:
        meta = pod["metadata"]
        delay = self.config.pod_startup_seconds + float(self.ctx.fault("extra_startup_seconds", 0.0, self.node))
        record = PodRecord(meta["uid"], (meta["namespace"], meta["name"]), start_at=time.monotonic() + delay)
        self._records[record.uid] = record
        self._uid_by_key[record.key] = record.uid
        self._write_status(pod, record)
        self.requeue_after(("pod", *record.key), delay)
        return record

    def _adopt(self, pod: dict, sandbox: PodSandbox) -> PodRecord:
        """A pod whose containers the runtime runs already: this kubelet was restarted. A real kubelet finds them
        through the CRI and keeps them running (same containerIDs, same restart counts, pod IP and startedAt);
        their readiness is the runtime's probe verdict, which survives here (upstream may report a container with
        a readinessProbe not ready until its first probe after the restart: kubernetes/kubernetes#100277)."""
        meta = pod["metadata"]
        record = PodRecord(meta["uid"], (meta["namespace"], meta["name"]), stage=RUNNING, ip=sandbox.ip,
                           sandbox=sandbox, signature=_signature(sandbox))
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
            if started := (cs.get("state") or {}).get("running", {}).get("startedAt"):
                record.started[cs["name"]] = (started, 0.0)   # long since: no readiness delay pending
        for name, cs in [*sandbox.init_containers.items(), *sandbox.containers.items()]:
            record.reported[name] = (cs.running, cs.ready, cs.restart_count, cs.reason)
        with self._cond:
            self._records[record.uid] = record
            self._uid_by_key[record.key] = record.uid
            self._ips_in_use.add(record.ip)
        return record

    def _advance_creating(self, pod: dict, record: PodRecord) -> None:
        wait = record.start_at - time.monotonic()
        if wait > 0:
            self.requeue_after(("pod", *record.key), wait)
            return
        conflict = self._multi_attach_conflict(pod)
        if conflict:
            self.events.warning(pod, "FailedAttachVolume", conflict, ATTACH_COMPONENT)
            self.requeue_after(("pod", *record.key), ATTACH_RETRY_SECONDS)
            return
        if (attaching := self._attach_wait(pod, record)) > 0:
            self.requeue_after(("pod", *record.key), attaching)
            return
        self._pull_and_start(pod, record)

    def _network_volumes(self, pod: dict) -> list[str]:
        """The PersistentVolumes of the pod's claims that are not node-local (they attach to a node)."""
        names = []
        for volume in pod["spec"].get("volumes") or ():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            pvc = self.cache.get(PVCS, pod["metadata"]["namespace"], claim) if claim else None
            pv = self.cache.get(PVS, None, pvc["spec"].get("volumeName") or "") if pvc else None
            if pv is not None and not pv["spec"].get("nodeAffinity"):
                names.append(pv["metadata"]["name"])
        return names

    def _attach_wait(self, pod: dict, record: PodRecord) -> float:
        """Seconds until the pod's network volumes are attached to this node: volume_attach_seconds once for volumes
        attached elsewhere or nowhere (ClusterConfig), nothing for ones attached here already."""
        seconds = self.config.volume_attach_seconds
        attachments = self.config.attachments
        if not seconds:
            return 0.0
        volumes = self._network_volumes(pod)
        now = time.monotonic()
        if record.attached_at is None:
            if all(attachments.get(v) == self.node for v in volumes):
                return 0.0
            record.attached_at = now + seconds
        if record.attached_at > now:
            return record.attached_at - now
        for volume in volumes:
            if attachments.get(volume) != self.node:
                attachments[volume] = self.node
                self.events.record(pod, "Normal", "SuccessfulAttachVolume",
                                   f'AttachVolume.Attach succeeded for volume "{volume}"', ATTACH_COMPONENT)
        return 0.0

    def _multi_attach_conflict(self, pod: dict) -> str | None:
        """A ReadWriteOnce network volume attaches to one node at a time: wait while a pod elsewhere uses it."""
        ns = pod["metadata"]["namespace"]
        for volume in pod["spec"].get("volumes") or ():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            pvc = self.cache.get(PVCS, ns, claim) if claim else None
            pv = self.cache.get(PVS, None, pvc["spec"].get("volumeName") or "") if pvc else None
            if pv is None or "ReadWriteOnce" not in (pv["spec"].get("accessModes") or ()) \
                    or pv["spec"].get("nodeAffinity"):
                continue
            users = [p["metadata"]["name"] for p in self.cache.list(PODS, ns)
                     if p["spec"].get("nodeName") not in (None, self.node) and not is_finished(p)
                     and any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim
                             for v in p["spec"].get("volumes") or ())]
            if users:
                return (f'Multi-Attach error for volume "{pv["metadata"]["name"]}" Volume is already used by '
                        f'pod(s) {", ".join(sorted(users))}')
        return None

    def _pull_and_start(self, pod: dict, record: PodRecord) -> None:
        containers = pod["spec"].get("containers") or []
        for c in containers:
            if c.get("image") not in self._pulled_images or c.get("imagePullPolicy") == "Always":
                self._event(pod, "Normal", "Pulling", f'Pulling image "{c.get("image")}"', c)
        failure = self.runtime.pull(pod, self.node)
        if failure:
            record.stage, record.pull_message = PULL_FAILED, failure
            record.pull_failures += 1
            failed = _pull_failed_container(pod, failure)
            image = failed.get("image") if failed else ""
            self._event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {failure}', failed)
            self._event(pod, "Warning", "Failed", "Error: ErrImagePull", failed)
            self._ensure_ip(record)
            self._write_status(pod, record)
            self.requeue_after(("pod", *record.key), 1.0)
            return
        for c in containers:
            image = c.get("image")
            if image in self._pulled_images and c.get("imagePullPolicy") != "Always":
                self._event(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine', c)
            else:
                self._event(pod, "Normal", "Pulled", f'Successfully pulled image "{image}" in 0s (0s including '
                                                     f'waiting). Image size: 0 bytes.', c)
                self._pulled_images.add(image)
        self._ensure_ip(record)
        record.sandbox = self.runtime.start_pod(pod, self.node, record.ip)
        stamp, mono = now_rfc3339(), time.monotonic()
        # with init containers, the others start once those have completed (_container_events sees it)
        first = (pod["spec"].get("initContainers") or [])[:1] or containers
        for c in first:
            self._event(pod, "Normal", "Created", f"Created container {c['name']}", c)
            self._event(pod, "Normal", "Started", f"Started container {c['name']}", c)
            record.started[c["name"]] = (stamp, mono)
        record.stage = RUNNING
        self._report_running(pod, record)

    def _retry_pull(self, pod: dict, record: PodRecord) -> None:
        """ErrImagePull is shown once, then ImagePullBackOff between attempts with a doubling delay."""
        if record.stage == PULL_FAILED:
            record.stage = PULL_BACKOFF
            failed = _pull_failed_container(pod, record.pull_message)
            image = failed.get("image", "") if failed else ""
            self._event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"', failed)
            self._event(pod, "Warning", "Failed", "Error: ImagePullBackOff", failed)
            self._write_status(pod, record)
            backoff = min(self.config.image_pull_backoff_seconds * 2 ** (record.pull_failures - 1), MAX_PULL_BACKOFF)
            self.requeue_after(("pod", *record.key), backoff)
            return
        self._pull_and_start(pod, record)

    def _report_running(self, pod: dict, record: PodRecord) -> None:
        sandbox = self.runtime.status(record.uid)
        record.signature = _signature(sandbox)
        if sandbox is not None:
            record.sandbox = sandbox
            self._container_events(pod, record, sandbox)
        self._write_status(pod, record)
        wake = self._next_readiness_change(pod, record)
        if wake is not None:
            self.requeue_after(("pod", *record.key), wake)

    def _container_events(self, pod: dict, record: PodRecord, sandbox: PodSandbox) -> None:
        """Unhealthy/BackOff events when the runtime reports a new probe failure or crash."""
        specs = {c["name"]: c for c in [*(pod["spec"].get("initContainers") or ()),
                                         *(pod["spec"].get("containers") or ())]}
        for name, cs in [*sandbox.init_containers.items(), *sandbox.containers.items()]:
            seen = (cs.running, cs.ready, cs.restart_count, cs.reason)
            if record.reported.get(name) == seen:
                continue
            before = record.reported.get(name)
            record.reported[name] = seen
            spec = specs.get(name)
            if cs.running and name not in record.started:   # started after the init containers
                self._event(pod, "Normal", "Created", f"Created container {name}", spec)
                self._event(pod, "Normal", "Started", f"Started container {name}", spec)
                record.started[name] = (now_rfc3339(), time.monotonic())
                continue
            if cs.running and not cs.ready and spec and spec.get("readinessProbe") and before is not None:
                self._event(pod, "Warning", "Unhealthy", f"Readiness probe failed: {cs.message or ''}".rstrip(), spec)
            if not cs.running and cs.reason == "CrashLoopBackOff":
                self._event(pod, "Warning", "BackOff", f"Back-off restarting failed container {name} in pod "
                            f"{pod['metadata']['name']}_{pod['metadata']['namespace']}({record.uid})", spec)
            if before is not None and cs.restart_count > before[2] and cs.running:
                self._event(pod, "Normal", "Started", f"Started container {name}", spec)
                record.started[name] = (now_rfc3339(), time.monotonic())

    def _next_readiness_change(self, pod: dict, record: PodRecord) -> float | None:
        """Seconds until a container's readinessProbe.initialDelaySeconds ends, if one is still pending."""
        now = time.monotonic()
        waits = []
        for c in pod["spec"].get("containers") or ():
            delay = (c.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
            started = record.started.get(c["name"])
            if delay and started and started[1] + delay > now:
                waits.append(started[1] + delay - now + 0.01)
        return min(waits) if waits else None

    def _terminate(self, pod: dict, record: PodRecord) -> None:
        if record.stage == TERMINATING:
            return
        had_sandbox, stage = record.sandbox is not None, record.stage
        record.stage = TERMINATING
        try:
            self._write_status(pod, record)   # not ready at once, so endpoints drop the pod first
        except Exception:   # the API server unreachable (restarting): the retried sync terminates it again
            record.stage = stage
            raise
        if had_sandbox:
            for c in pod["spec"].get("containers") or ():
                self._event(pod, "Normal", "Killing", f"Stopping container {c['name']}", c)
        grace = min(float(pod["metadata"].get("deletionGracePeriodSeconds", 30)), self.config.max_grace_seconds)
        args = (record, pod["metadata"]["uid"], grace if had_sandbox else 0.0)
        if not self.runtime.stop_blocks:
            self._stop_and_remove(*args)   # nothing to wait for: a thread would only cost its start-up
            return
        thread = threading.Thread(target=self._stop_and_remove, args=args, name=f"kubesim-stop-{record.key[1]}",
                                  daemon=True)
        self._track(thread)
        thread.start()

    def _track(self, thread: threading.Thread) -> None:
        """Remember a stopping thread so shutdown can wait for it; finished ones are dropped."""
        self._stopping_threads = [t for t in self._stopping_threads if t.is_alive()] + [thread]

    def _stop_and_remove(self, record: PodRecord, uid: str, grace: float) -> None:
        try:
            self.runtime.stop_pod(uid, grace)
        except Exception:
            log.exception("%s: stopping pod %s failed", self.name, record.key)
        self._release(record)
        current = self.cache.get(PODS, *record.key)
        if current is not None and current["metadata"]["uid"] == uid:
            try:
                self.store.remove(PODS, *record.key)
            except Exception as error:   # the API server unreachable (restarting): the pod's sync removes it, retried
                log.warning("%s: removing pod %s failed: %r; retrying", self.name, record.key, error)
                self.enqueue(("pod", *record.key))

    def _forget(self, uid: str) -> None:
        record = self._records.get(uid)
        if record is None or record.stage == TERMINATING:
            return
        record.stage = TERMINATING
        thread = threading.Thread(target=self._stop_quietly, args=(record,), daemon=True)
        self._track(thread)
        thread.start()

    def _stop_quietly(self, record: PodRecord) -> None:
        try:
            self.runtime.stop_pod(record.uid, 0)
        finally:
            self._release(record)

    def _release(self, record: PodRecord) -> None:
        with self._cond:
            self._records.pop(record.uid, None)
            if self._uid_by_key.get(record.key) == record.uid:
                del self._uid_by_key[record.key]
            self._ips_in_use.discard(record.ip)

    def _ensure_ip(self, record: PodRecord) -> None:
        """Pod IPs of node n are 127.(100+n).<network_id>.k, handed out in order and unique while in use."""
        if record.ip:
            return
        prefix = self.pod_cidr.rsplit(".", 1)[0]
        with self._cond:
            for _ in range(254):
                n = self._next_ip
                self._next_ip = self._next_ip % 254 + 1
                ip = f"{prefix}.{n}"
                if ip not in self._ips_in_use:
                    self._ips_in_use.add(ip)
                    record.ip = ip
                    return
        raise RuntimeError(f"{self.node}: pod IPs exhausted")

    # ---- status ------------------------------------------------------------------------------------
    def _write_status(self, pod: dict, record: PodRecord) -> None:
        """Status from the latest cached pod, guarded by its resourceVersion (a 409 retries the sync)."""
        current = self.cache.get(PODS, *record.key)
        if current is None or current["metadata"]["uid"] != record.uid:
            return   # gone, or replaced by a pod of the same name
        meta = current["metadata"]
        self.store.update(PODS, {"metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                              "resourceVersion": meta["resourceVersion"]},
                                 "status": self._pod_status(current, record)}, subresource="status", echo=False,
                          adopt=True)

    def _pod_status(self, pod: dict, record: PodRecord) -> dict:
        # the cached pod is shared: copy what set_condition changes in place; the rest is replaced whole
        status = dict(pod.get("status") or {})
        status["conditions"] = [dict(c) for c in status.get("conditions") or ()]
        phase, sandbox_ready, waiting_reason = STAGES[record.stage]
        stamp = now_rfc3339()
        init_specs = pod["spec"].get("initContainers") or []
        initialized = not init_specs or bool(record.sandbox and record.sandbox.initialized)
        containers = self._container_statuses(pod, record, waiting_reason if initialized or waiting_reason
                                              else "PodInitializing")
        inits = self._container_statuses(pod, record, waiting_reason, init=True) if init_specs else []
        if record.stage == TERMINATING:
            for cs in containers + inits:
                cs["ready"] = False
        elif phase != "Running":
            status["phase"] = phase
        elif not initialized:
            status["phase"] = "Failed" if _init_failed_for_good(pod, inits) else "Pending"
        else:
            status["phase"] = self._phase(pod, containers)
        unready = [cs["name"] for cs in containers if not cs["ready"]]
        all_ready = not unready and bool(containers)
        status["hostIP"] = self.internal_ip
        status["hostIPs"] = [{"ip": self.internal_ip}]
        if record.ip and sandbox_ready:
            status["podIP"] = record.ip
            status["podIPs"] = [{"ip": record.ip}]
        status.setdefault("startTime", stamp)
        status["qosClass"] = _qos_class(pod)
        set_condition(status, "PodReadyToStartContainers", "True" if sandbox_ready else "False", stamp=stamp,
                      probe_time=True)
        sidecars = _sidecar_names(pod)
        incomplete = [cs["name"] for cs in inits
                      if not (cs["state"].get("terminated", {}).get("exitCode") == 0 or cs.get("started")
                              and cs["name"] in sidecars)]
        set_condition(status, "Initialized", *(("False", "ContainersNotInitialized",
                                                f"containers with incomplete status: [{' '.join(incomplete)}]")
                                               if incomplete else ("True", None, None)), stamp=stamp, probe_time=True)
        not_ready = ("ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
        if record.stage == TERMINATING:
            not_ready = ("ContainersNotReady", f"containers with unready status: [{' '.join(cs['name'] for cs in containers)}]")
        ready_args = ("True", None, None) if all_ready and record.stage != TERMINATING else ("False", *not_ready)
        if status.get("phase") == "Succeeded":
            ready_args = ("False", "PodCompleted", None)
        set_condition(status, "ContainersReady", *ready_args, stamp=stamp, probe_time=True)
        set_condition(status, "Ready", *ready_args, stamp=stamp, probe_time=True)
        set_condition(status, "PodScheduled", "True", stamp=stamp, probe_time=True)
        order = {"PodReadyToStartContainers": 0, "Initialized": 1, "Ready": 2, "ContainersReady": 3, "PodScheduled": 4}
        status["conditions"].sort(key=lambda c: order.get(c["type"], 9))
        status["containerStatuses"] = containers
        if inits:
            status["initContainerStatuses"] = inits
        return status

    @staticmethod
    def _phase(pod: dict, containers: list[dict]) -> str:
        """Pending until a container has run, Running until every one has terminated for good, then
        Succeeded or Failed."""
        if all("waiting" in cs["state"] and not cs.get("lastState") for cs in containers):
            return "Pending"
        terminated = [cs["state"].get("terminated") for cs in containers]
        if not containers or not all(terminated):
            return "Running"
        return "Succeeded" if all(t.get("exitCode") == 0 for t in terminated) else "Failed"

    def _container_statuses(self, pod: dict, record: PodRecord, waiting_reason: str | None,
                            init: bool = False) -> list[dict]:
        key = "initContainerStatuses" if init else "containerStatuses"
        previous = {cs["name"]: cs for cs in (pod.get("status") or {}).get(key) or ()}
        restart_policy = pod["spec"].get("restartPolicy", "Always")
        now = time.monotonic()
        out = []
        for c in pod["spec"].get("initContainers" if init else "containers") or ():
            name = c["name"]
            cs = {"name": name, "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
                  "started": False, "state": {}}
            found = (record.sandbox.init_containers if init else record.sandbox.containers) if record.sandbox else {}
            runtime_cs = found.get(name)
            if waiting_reason is not None or runtime_cs is None:
                waiting = {"reason": waiting_reason or "ContainerCreating"}
                if waiting_reason in (PULL_FAILED, PULL_BACKOFF):
                    waiting["message"] = (record.pull_message if waiting_reason == PULL_FAILED
                                          else f'Back-off pulling image "{c.get("image", "")}"')
                cs["state"] = {"waiting": waiting}
                if record.stage == TERMINATING and name in previous:
                    cs = dict(previous[name], ready=False)
                out.append(cs)
                continue
            cs["imageID"] = runtime_cs.image_id or f"kubesim://{c.get('image', '')}"
            cs["containerID"] = container_id(record.uid, name, runtime_cs.instance)
            cs["restartCount"] = runtime_cs.restart_count
            started_at, started_mono = record.started.get(name, (now_rfc3339(), now))
            prev_terminated = previous.get(name, {}).get("lastState")
            if runtime_cs.last_terminated:   # the runtime's word: a restart faster than a status write has one too
                cs["lastState"] = {"terminated": dict(runtime_cs.last_terminated)}
            elif prev_terminated:
                cs["lastState"] = prev_terminated
            if runtime_cs.running:
                delay = (c.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
                cs["state"] = {"running": {"startedAt": started_at}}
                cs["started"] = True
                cs["ready"] = bool(runtime_cs.ready) and now >= started_mono + delay
            else:
                terminated = {"exitCode": runtime_cs.exit_code if runtime_cs.exit_code is not None else 1,
                              "reason": "Completed" if runtime_cs.exit_code == 0 else "Error",
                              "startedAt": started_at, "finishedAt": now_rfc3339(),
                              "containerID": cs["containerID"]}
                if runtime_cs.message:
                    terminated["message"] = runtime_cs.message
                restarts = restart_after_exit(c, restart_policy, runtime_cs.exit_code, init) \
                    if runtime_cs.exit_code is not None else False
                if runtime_cs.reason == "CrashLoopBackOff" or (restarts and runtime_cs.exit_code is not None):
                    cs["lastState"] = {"terminated": terminated}
                    cs["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": runtime_cs.message or
                                               f"back-off 10s restarting failed container={name} pod="
                                               f"{pod['metadata']['name']}_{pod['metadata']['namespace']}({record.uid})"}}
                elif runtime_cs.exit_code is not None:
                    cs["state"] = {"terminated": terminated}
                else:
                    cs["state"] = {"waiting": {"reason": runtime_cs.reason or "ContainerCreating"}}
            if record.stage == TERMINATING:
                cs["ready"] = False
            out.append(cs)
        return out

    def _event(self, pod: dict, type_: str, reason: str, message: str, container: dict | None) -> None:
        kind = "initContainers" if container in (pod["spec"].get("initContainers") or ()) else "containers"
        field_path = f"spec.{kind}{{{container['name']}}}" if container else None
        self.events.record(pod, type_, reason, message, COMPONENT, self.node, field_path)

    # ---- shutdown ----------------------------------------------------------------------------------
    def stop_all_pods(self) -> list[threading.Thread]:
        """Stop every sandbox this kubelet started (manager shutdown); returns the threads doing it."""
        threads = []
        for record in list(self._records.values()):
            if record.sandbox is not None and record.stage != TERMINATING:
                record.stage = TERMINATING
                if not self.runtime.stop_blocks:
                    self._stop_quietly(record)
                    continue
                t = threading.Thread(target=self._stop_quietly, args=(record,), daemon=True)
                t.start()
                threads.append(t)
        return threads + [t for t in self._stopping_threads if t.is_alive()]


def _status_only(event: Event) -> bool:
    """A change to nothing a kubelet acts on: its own status writes come back as these, and upstream's pod
    config source ignores them too (a status-only change is a RECONCILE, not an UPDATE)."""
    if event.type != "MODIFIED":
        return False
    old, new = event.old, event.object
    before, after = old["metadata"], new["metadata"]
    return ((old.get("spec") is new.get("spec") or old.get("spec") == new.get("spec"))
            and before.get("deletionTimestamp") == after.get("deletionTimestamp")
            and before.get("deletionGracePeriodSeconds") == after.get("deletionGracePeriodSeconds"))


def _pull_failed_container(pod: dict, failure: str) -> dict | None:
    """The container whose image a pull failure quotes (the runtime's and the faults' messages do), else the first."""
    containers = (pod["spec"].get("initContainers") or []) + (pod["spec"].get("containers") or [])
    return next((c for c in containers if f'"{c.get("image")}"' in failure),
                (pod["spec"].get("containers") or [None])[0])


def _sidecar_names(pod: dict) -> set[str]:
    return {c["name"] for c in pod["spec"].get("initContainers") or () if c.get("restartPolicy") == "Always"}


def _init_failed_for_good(pod: dict, inits: list[dict]) -> bool:
    """An init container failed and the pod's restartPolicy is Never: the pod fails without its containers."""
    return pod["spec"].get("restartPolicy", "Always") == "Never" and any(
        cs["state"].get("terminated", {}).get("exitCode", 0) != 0 for cs in inits)


def _condition_reasons(node: dict) -> set[str]:
    return {c.get("reason") for c in (node.get("status") or {}).get("conditions") or ()}


def _signature(sandbox: PodSandbox | None) -> tuple:
    if sandbox is None:
        return ()
    return tuple((c.name, c.running, c.ready, c.exit_code, c.reason, c.restart_count)
                 for c in [*sandbox.init_containers.values(), *sandbox.containers.values()])


def _qos_class(pod: dict) -> str:
    containers = pod["spec"].get("containers") or ()
    requests = [((c.get("resources") or {}).get("requests") or {}) for c in containers]
    limits = [((c.get("resources") or {}).get("limits") or {}) for c in containers]
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(l.get("cpu") and l.get("memory") and
                     parse_quantity(r.get("cpu", l["cpu"])) == parse_quantity(l["cpu"]) and
                     parse_quantity(r.get("memory", l["memory"])) == parse_quantity(l["memory"])
                     for r, l in zip(requests, limits))
    return "Guaranteed" if guaranteed else "Burstable"


class Kubelets:
    """All kubelets, fed by one store listener that routes pod events by spec.nodeName, and one poller
    that reads the runtime's container states for every running pod."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.by_node: dict[str, Kubelet] = {}
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kubesim-kubelet-poller", daemon=True)

    def add(self, node: str, ctx: Context | None = None, index: int | None = None) -> Kubelet:
        """ctx: the node's own (store, cache, runtime) when each kubelet has its identity (real control plane);
        index: the node's number (its addresses), given when a restarted kubelet replaces the node's."""
        kubelet = Kubelet(ctx or self.ctx, node, index or len(self.by_node) + 1)
        self.by_node[node] = kubelet
        return kubelet

    def on_event(self, event: Event) -> None:
        if event.resource is not PODS or _status_only(event):
            return
        meta = event.object["metadata"]
        for obj in (event.object, event.old):
            node = obj and obj.get("spec", {}).get("nodeName")
            kubelet = self.by_node.get(node) if node else None
            if kubelet is not None:
                kubelet.enqueue(("pod", meta["namespace"], meta["name"]))

    def start_poller(self) -> None:
        self._poller.start()

    def stop_poller(self) -> None:
        self._stopped.set()
        if self._poller.is_alive():
            self._poller.join(timeout=5)

    def _poll(self) -> None:
        while not self._stopped.wait(self.ctx.config.probe_poll_seconds):
            for kubelet in list(self.by_node.values()):
                try:
                    kubelet.poll_runtime()
                except Exception:
                    log.exception("%s: polling the runtime failed", kubelet.name)
