"""The real control plane (issue 14, phase 1): build time, start-up to /readyz, memory of each component.

Build: `make controlplane` with the machine's Go caches as they are — a no-op when the binaries of this key
exist (the usual case) — then `controlplane/build.sh` into a scratch directory: with a warm GOCACHE that is
the "cached" build (compile cache hits, link only). The cold build (empty GOMODCACHE and GOCACHE, downloads
included) takes tens of minutes, so it runs only with KUBESIM_BENCH_COLD_BUILD=1.
Start-up: STARTS fresh control planes one after another (new PKI, empty etcd each time), milestones from
ControlPlane.times; memory: VmRSS of each component once the last one is ready, and again after IDLE_SECONDS.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time

from .common import REPO_ROOT, Result, percentile

STARTS = 5
IDLE_SECONDS = 30


def _timed_run(argv: list[str], env: dict | None = None) -> float:
    start = time.monotonic()
    subprocess.run(argv, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - start


def _build_times(result: Result) -> None:
    result.add("`make controlplane` when built (stamp hit)", f"{_timed_run(['make', '-s', 'controlplane']):.2f} s")
    with tempfile.TemporaryDirectory(prefix="bench-controlplane-") as scratch:
        seconds = _timed_run(["controlplane/build.sh", os.path.join(scratch, "bin")])
        result.add(f"rebuild with this machine's Go caches ({os.environ.get('GOCACHE') or 'default GOCACHE'})",
                   f"{seconds:.0f} s")
        result.raw["cached_build_s"] = seconds
        if os.environ.get("KUBESIM_BENCH_COLD_BUILD") == "1":
            env = dict(os.environ, GOMODCACHE=os.path.join(scratch, "mod"), GOCACHE=os.path.join(scratch, "build"))
            seconds = _timed_run(["controlplane/build.sh", os.path.join(scratch, "cold-bin")], env)
            subprocess.run(["go", "clean", "-modcache"], env=env, check=False)  # module files are read-only
            result.add("cold build (empty GOMODCACHE and GOCACHE: downloads + compile)", f"{seconds / 60:.1f} min",
                       "well under 45 min (CI: 90 min, 2 cores)", seconds < 45 * 60)
            result.raw["cold_build_s"] = seconds


def _sizes(result: Result, bin_dir) -> None:
    sizes = {c: os.path.getsize(os.path.join(bin_dir, c)) / 2 ** 20 for c in sorted(os.listdir(bin_dir))
             if not c.startswith(".")}
    result.add("binary sizes (stripped)", ", ".join(f"{c} {mib:.0f} MiB" for c, mib in sizes.items()))


def run() -> Result:
    from kubesim.controlplane import COMPONENTS, ControlPlane, find_bin_dir

    result = Result("Real control plane (issue 14 phase 1)", ".venv/bin/python -m bench controlplane")
    _build_times(result)
    bin_dir = find_bin_dir()
    _sizes(result, bin_dir)
    starts = []
    for i in range(STARTS):
        with ControlPlane() as cp:
            starts.append(cp.times)
            if i == STARTS - 1:
                at_ready = cp.rss_bytes()
                time.sleep(IDLE_SECONDS)
                idle = cp.rss_bytes()
    for milestone, label in (("etcd_healthy", "etcd /health"), ("apiserver_ready", "kube-apiserver /readyz"),
                             ("components_healthy", "controller-manager and scheduler healthy"),
                             ("ready", "default ServiceAccount exists (pods can be created)")):
        values = [getattr(t, milestone) for t in starts]
        result.add(f"start → {label}, p50 / max of {STARTS}",
                   f"{percentile(values, 0.5):.1f} / {max(values):.1f} s")
        result.raw[milestone] = values
    for component in COMPONENTS:
        result.add(f"RSS {component}, at ready / after {IDLE_SECONDS} s idle",
                   f"{at_ready[component] / 2 ** 20:.0f} / {idle[component] / 2 ** 20:.0f} MiB")
    result.add("RSS all four, after idle", f"{sum(idle.values()) / 2 ** 20:.0f} MiB")
    result.raw.update(rss_at_ready=at_ready, rss_idle=idle)
    result.notes.append(f"binaries: {bin_dir} ({os.path.realpath(bin_dir)})")
    return result
