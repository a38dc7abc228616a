"""Polling for a condition in tests: the one helper every test support module uses."""
from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """The predicate's first truthy value; AssertionError naming ``what`` once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
