"""kubesim's data plane: real processes behind pods, volumes as directories, real Service traffic.

``DataPlane(store, config, faults)`` is what the cluster builds: ``.runtime`` goes to the kubelets,
``.start()`` starts the Service proxies, ``.stop()`` stops them and every pod process.
"""
from __future__ import annotations

import os

from ..config import ClusterConfig
from ..store import Store
from .network import LoopbackNetwork
from .proxy import PROXY_ADDRESS_ANNOTATION, ServiceProxy
from .runtime import ProcessRuntime
from .volumes import HOST_PATH_ANNOTATION, VolumeProblem

__all__ = ["DataPlane", "ProcessRuntime", "ServiceProxy", "VolumeProblem", "PROXY_ADDRESS_ANNOTATION",
           "HOST_PATH_ANNOTATION"]


class DataPlane:
    def __init__(self, store: Store, config: ClusterConfig, faults=None):
        os.makedirs(config.work_dir, exist_ok=True)
        self.network = LoopbackNetwork()
        self.runtime = ProcessRuntime(store, config, faults, self.network)
        self.proxy = ServiceProxy(store, self.network)

    def start(self) -> None:
        self.proxy.start()

    def stop(self) -> None:
        self.proxy.stop()
        self.runtime.close()
