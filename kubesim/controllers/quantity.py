"""resource.Quantity parsing ("100m", "128Mi", "1.5G") to numbers the scheduler can add up."""
from __future__ import annotations

_SUFFIXES = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60,
             "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
             "E": 1e18}


def parse_quantity(value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def pod_requests(pod: dict) -> dict[str, float]:
    """Effective requests like the scheduler computes them: sum of containers, at least each init container."""
    totals: dict[str, float] = {}
    for c in pod.get("spec", {}).get("containers") or ():
        for name, value in ((c.get("resources") or {}).get("requests") or {}).items():
            totals[name] = totals.get(name, 0.0) + parse_quantity(value)
    for c in pod.get("spec", {}).get("initContainers") or ():
        for name, value in ((c.get("resources") or {}).get("requests") or {}).items():
            totals[name] = max(totals.get(name, 0.0), parse_quantity(value))
    return totals
