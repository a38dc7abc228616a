"""Settings of one simulated cluster, shared by the API server, the controllers and the data plane."""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class ClusterConfig:
    nodes: list[str] = field(default_factory=lambda: ["node1", "node2"])
    host: str = "127.0.0.1"
    port: int = 0                       # 0: any free port
    pod_startup_seconds: float = 0.5    # Pending/ContainerCreating -> Running on every node
    node_cpu: str = "4"
    node_memory: str = "8Gi"
    max_pods: int = 110
    max_grace_seconds: float = 2.0      # cap on terminationGracePeriodSeconds so tests stay fast
    state_dir: str | None = None        # persist objects here; None keeps them in memory
    work_dir: str | None = None         # volumes, process logs, PostgreSQL data; a temp dir when None
    heartbeat_seconds: float = 10.0     # node Lease renewals and Ready condition updates
    node_monitor_grace_seconds: float = 40.0
    default_toleration_seconds: int = 300   # NoExecute not-ready/unreachable eviction delay (DefaultTolerationSeconds)
    image_pull_backoff_seconds: float = 10.0  # first ImagePullBackOff delay; doubles up to 300 s like the kubelet
    # How long a network-attached volume takes to attach to a node it is not attached to (a CSI attach, tens of
    # seconds on clouds); 0: at once. Node-local volumes never attach.
    volume_attach_seconds: float = 0.0
    probe_poll_seconds: float = 0.15    # how often the kubelet reads container states and probe verdicts
    kubernetes_version: str = "v1.32.4"
    run_processes: bool = True          # data plane: real processes for known images
    # The Service proxy (kube-proxy's part) in a process of its own, a client of the API server like kube-proxy,
    # instead of a thread of this one: a busy API server then does not hold up the requests it forwards.
    proxy_process: bool = False
    images_file: str | None = None      # extra image table entries (YAML), merged over the built-in one
    # Third octet of node (127.0.N.n), pod (127.1xx.N.k) and ClusterIP (127.96-99.N.k) addresses; 0 picks
    # one at random so that two clusters on one machine do not answer on each other's addresses.
    network_id: int = 0
    # "kubesim": kubesim's own API server and controllers in this process. "real": the real kube-apiserver,
    # controller-manager and scheduler (kubesim.controlplane, built by `make controlplane`) with kubesim's
    # kubelets as the nodes (kubesim.realnodes).
    control_plane: str = "kubesim"
    # control_plane="real": put the faults proxy (kubesim/controlplane/faultproxy.py) between clients and the API
    # server so api-error/api-latency faults strike there (+0.2-0.9 ms a request); kubesim's API server always can.
    api_faults: bool = False

    def __post_init__(self) -> None:
        # the simulated storage backend, shared by the cluster's nodes: the node each network volume is attached to
        self.attachments: dict[str, str] = {}
        if self.control_plane not in ("kubesim", "real"):
            raise ValueError(f'control_plane must be "kubesim" or "real", not {self.control_plane!r}')
        if not self.network_id:
            self.network_id = random.randint(2, 254)
