"""Per-release work of a batch (plan, lock and apply, probe, commit, report) on a few threads: each release's steps
are API round trips and waits, not CPU, so N releases need not cost N round trips one after another."""
from __future__ import annotations

PARALLEL_RELEASES = 16   # releases planned/locked/applied/probed/committed at once


def in_parallel(fn, items: list, limit: int = PARALLEL_RELEASES) -> list:
    """``fn`` over ``items`` on at most ``limit`` threads, results in order; an exception other than the ones ``fn``
    returns is raised (a task then retries: every step is safe to run again)."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(limit, len(items))) as pool:
        return list(pool.map(fn, items))
