"""``python -m kubesim.proxy_process --kubeconfig PATH``: kubesim's Service proxy as a process of its own (kube-proxy's
part), a client of the API server with informers on Services, EndpointSlices, Endpoints and Nodes (as RealNodes runs
it beside the real control plane). Prints ``ready`` once its informers have listed; stops on SIGTERM."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from .dataplane.network import LoopbackNetwork
from .dataplane.proxy import ServiceProxy
from .realnodes import PROXY_VIEW
from .remote import Informed, RemoteStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    store = RemoteStore.from_kubeconfig(args.kubeconfig, [Informed(rt) for rt in PROXY_VIEW],
                                        user_agent="kubesim-proxy").start()
    proxy = ServiceProxy(store, LoopbackNetwork())
    proxy.start()
    print("ready", flush=True)
    stop.wait()
    proxy.stop()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
