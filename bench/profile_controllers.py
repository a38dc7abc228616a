"""Profile the re-targeting case with cProfile in every thread (not part of ``python -m bench``):
``.venv/bin/python -m bench.profile_controllers [replicas] [surge] [sort]``."""
from __future__ import annotations

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


if __name__ == "__main__":
    replicas = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    surge = sys.argv[2] if len(sys.argv) > 2 else "1"
    surge = surge if surge.endswith("%") else int(surge)
    profiles = profile_threads()
    print(controllers.measure(replicas, surge))
    threading.setprofile(None)
    stats = pstats.Stats(*profiles)
    stats.sort_stats(sys.argv[3] if len(sys.argv) > 3 else "tottime").print_stats(35)
    for name in sys.argv[4:]:
        stats.print_callers(name) if not name.startswith(">") else stats.print_callees(name[1:])
