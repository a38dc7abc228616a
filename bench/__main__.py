"""``python -m bench`` runs every benchmark; ``python -m bench NAME...`` runs some (names: see BENCHMARKS)."""
from __future__ import annotations

import importlib
import sys
import traceback

from .common import machine_facts, save

BENCHMARKS = ("api", "controllers", "dataplane", "evict_vs_surge", "dag_package", "maintenance", "evacuation",
              "move_latency", "controlplane", "pod_lifecycle", "db_switchover", "executors", "reliability")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    print(f"machine: {machine_facts()}\n", flush=True)
    failed = 0
    for name in names:
        try:
            result = importlib.import_module(f"bench.{name}").run()
        except Exception:
            traceback.print_exc()
            failed += 1
            continue
        save(name, result)
        print(result.markdown(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
