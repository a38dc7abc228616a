"""Where the controllers spend CPU in the re-targeting case; a tool, not part of ``python -m bench``.

``.venv/bin/python -m bench.profile_controllers [replicas] [surge] --per-controller``
    thread CPU time of every controller's syncs (kubelets summed), cheap enough to trust;
``.venv/bin/python -m bench.profile_controllers [replicas] [surge] [sort] [FUNC | >FUNC ...]``
    cProfile (CPU time) in every thread; FUNC prints its callers, >FUNC its callees. cProfile slows kubesim
    several times over and inflates call-heavy code: read it for call counts and callers, not for shares.
"""
from __future__ import annotations

import collections
import cProfile
import pstats
import sys
import threading
import time

from . import controllers


def profile_threads() -> list[cProfile.Profile]:
    """Start a cProfile in every thread started from now on (the controllers' workers, timers, pollers)."""
    profiles: list[cProfile.Profile] = []

    def hook(frame, event, arg):
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)   # CPU time: lock waits and sleeps cost nothing
        profiles.append(profile)
        profile.enable()
    threading.setprofile(hook)
    return profiles


def per_controller(replicas: int, surge) -> None:
    from kubesim.controllers import base
    cpu: collections.Counter = collections.Counter()
    syncs: collections.Counter = collections.Counter()
    original = base.Controller._sync_safely

    def timed(self, key):
        start = time.thread_time()
        original(self, key)
        name = "kubelets" if self.name.startswith("kubelet-") else self.name
        cpu[name] += time.thread_time() - start
        syncs[name] += 1
    base.Controller._sync_safely = timed
    print(controllers.measure(replicas, surge))
    for name, seconds in cpu.most_common():
        print(f"{name:18s} {seconds:6.2f} s CPU {syncs[name]:7d} syncs {seconds / syncs[name] * 1e6:6.0f} us/sync")


def main(argv: list[str]) -> None:
    replicas = int(argv[0]) if argv else 20
    surge = argv[1] if len(argv) > 1 else "1"
    surge = surge if surge.endswith("%") else int(surge)
    rest = argv[2:]
    if rest[:1] == ["--per-controller"]:
        return per_controller(replicas, surge)
    profiles = profile_threads()
    print(controllers.measure(replicas, surge))
    threading.setprofile(None)
    stats = pstats.Stats(*profiles)
    stats.sort_stats(rest[0] if rest else "tottime").print_stats(35)
    for name in rest[1:]:
        if name.startswith(">"):
            stats.print_callees(name[1:])
        else:
            stats.print_callers(name)


if __name__ == "__main__":
    main(sys.argv[1:])
