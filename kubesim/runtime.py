"""The contract between the kubelet controller and whatever runs a pod's containers.

The kubelet (controllers/kubelet.py) owns the pod lifecycle as the API shows it; a ContainerRuntime
owns what happens on the machine. ``SimulatedRuntime`` runs nothing (control plane only); the data plane
(kubesim/dataplane/) provides ``ProcessRuntime``, which starts real processes for known images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ContainerStatus:
    """What the runtime knows of one container right now."""
    name: str
    running: bool = True
    ready: bool = True                 # readiness probe verdict (True when there is no probe)
    exit_code: int | None = None       # set once the process has exited
    reason: str | None = None          # e.g. "ErrImagePull", "CrashLoopBackOff", "Error", "Completed"
    message: str | None = None
    restart_count: int = 0
    image_id: str = ""
    instance: int = 0                  # which start of the container this is (0, 1, ...): its containerID
    last_terminated: dict | None = None   # the instance before this one, as the status's lastState.terminated


@dataclass
class PodSandbox:
    """A started pod as the runtime keeps it; the kubelet only reads it through the runtime."""
    uid: str
    ip: str
    containers: dict[str, ContainerStatus] = field(default_factory=dict)
    init_containers: dict[str, ContainerStatus] = field(default_factory=dict)
    initialized: bool = True           # every init container has completed (a sidecar: started)


def container_id(pod_uid: str, container: str, instance: int) -> str:
    """The containerID of one instance (one start) of a container: a new one after each restart."""
    return f"kubesim://{pod_uid[:8]}-{container}-{instance}"


def instance_of(container_id: str) -> int | None:
    """The instance a container_id() names; None for another form."""
    tail = container_id.rsplit("-", 1)[-1]
    return int(tail) if container_id.startswith("kubesim://") and tail.isdigit() else None


def restart_after_exit(spec: dict, pod_policy: str, exit_code: int, init: bool) -> bool:
    """Whether the kubelet starts a container again after it exited: a sidecar (an init container with
    restartPolicy Always) always; another init container only after a failure and unless the pod says Never; the
    pod's containers as its restartPolicy says."""
    if init:
        return spec.get("restartPolicy") == "Always" or (exit_code != 0 and pod_policy != "Never")
    return pod_policy == "Always" or pod_policy == "OnFailure" and exit_code != 0


class ContainerRuntime(Protocol):
    stop_blocks: bool
    """Whether stop_pod may block (real processes): the kubelet then stops each pod on a thread of its own."""

    def pull(self, pod: dict, node: str) -> str | None:
        """None when every image can be had, else the failure message (the kubelet reports ErrImagePull)."""

    def start_pod(self, pod: dict, node: str, pod_ip: str) -> PodSandbox:
        """Start the pod's containers; returns at once, containers may still be starting."""

    def status(self, pod_uid: str) -> PodSandbox | None:
        """Current container states, with probes evaluated; None when the runtime has no such pod."""

    def stop_pod(self, pod_uid: str, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL once grace_seconds have passed; blocks until everything is gone."""

    def logs(self, pod_uid: str, container: str, tail_lines: int | None = None) -> str:
        """The latest instance's stdout and stderr so far."""

    def log_path(self, pod_uid: str, container: str, instance: int | None = None) -> str | None:
        """The CRI log file of one instance of a container (None: the latest); None when there is none."""

    def running(self, pod_uid: str, container: str, instance: int) -> bool:
        """Whether that instance of the container runs now (a log follow ends when it stops)."""

    def pod_uids(self) -> list[str]:
        """The pods the runtime has (a restarted kubelet stops those no longer bound to its node)."""

    def close(self) -> None:
        """Stop every pod; nothing may be left running."""


class SimulatedRuntime:
    """Runs nothing: every container starts at once and is Ready (the control-plane-only cluster)."""
    stop_blocks = False

    def __init__(self) -> None:
        self._pods: dict[str, PodSandbox] = {}

    def pull(self, pod: dict, node: str) -> str | None:
        return None

    def start_pod(self, pod: dict, node: str, pod_ip: str) -> PodSandbox:
        # init containers complete at once: nothing runs here
        sandbox = PodSandbox(pod["metadata"]["uid"], pod_ip, {
            c["name"]: ContainerStatus(c["name"]) for c in pod["spec"].get("containers", [])}, {
            c["name"]: ContainerStatus(c["name"], running=c.get("restartPolicy") == "Always",
                                       exit_code=None if c.get("restartPolicy") == "Always" else 0,
                                       reason=None if c.get("restartPolicy") == "Always" else "Completed")
            for c in pod["spec"].get("initContainers", [])})
        self._pods[sandbox.uid] = sandbox
        return sandbox

    def status(self, pod_uid: str) -> PodSandbox | None:
        return self._pods.get(pod_uid)

    def stop_pod(self, pod_uid: str, grace_seconds: float) -> None:
        self._pods.pop(pod_uid, None)

    def pod_uids(self) -> list[str]:
        return list(self._pods)

    def logs(self, pod_uid: str, container: str, tail_lines: int | None = None) -> str:
        return ""

    def log_path(self, pod_uid: str, container: str, instance: int | None = None) -> str | None:
        return None

    def running(self, pod_uid: str, container: str, instance: int) -> bool:
        return False

    def close(self) -> None:
        self._pods.clear()
