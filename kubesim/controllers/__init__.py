"""kubesim's controllers: the kube-controller-manager, kube-scheduler and kubelets of the simulator."""
from .disruption import evict
from .manager import ControllerManager

__all__ = ["ControllerManager", "evict"]
