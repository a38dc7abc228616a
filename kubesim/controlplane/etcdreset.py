"""Put a running control plane back to a recorded state by writing etcd directly: the way one control plane
serves many tests, each as if on a fresh cluster, without paying its ~10 s start each time.

`EtcdBaseline.record()` keeps every key under /registry/ with its revision and value; `reset()` deletes, in one
etcd transaction, every key written since and puts back every recorded key that was changed or deleted. The API
server's watch cache and every controller see those as ordinary watch events (objects deleted, no grace or
finalizers), as after `etcdctl del`. Keys the control plane rewrites on its own (its leases, priority and
fairness configuration, the aggregated APIs' status) are left alone.
"""
from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.request

PREFIX = b"/registry/"
# The control plane's own, rewritten by it while it runs: a reset must neither remove nor rewind them.
CONTROL_PLANE_KEYS = (b"/registry/leases/kube-system/", b"/registry/masterleases/",
                      b"/registry/apiregistration.k8s.io/", b"/registry/flowschemas/",
                      b"/registry/prioritylevelconfigurations/")
TXN_OPS = 5000          # etcd is started with --max-txn-ops above this
PASSES = 8              # a controller may write between the read and the transaction: read again until stable


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _range_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdBaseline:
    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self.url, self.context = url, context
        self.keys: dict[bytes, tuple[int, str]] = {}    # key -> (mod_revision, base64 value)

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30, context=self.context) as resp:
            return json.loads(resp.read())

    def _read(self, keys_only: bool) -> dict[bytes, tuple[int, str]]:
        answer = self._post("/v3/kv/range", {"key": _b64(PREFIX), "range_end": _b64(_range_end(PREFIX)),
                                             "keys_only": keys_only})
        return {base64.b64decode(kv["key"]): (int(kv["mod_revision"]), kv.get("value", ""))
                for kv in answer.get("kvs", [])
                if not base64.b64decode(kv["key"]).startswith(CONTROL_PLANE_KEYS)}

    def record(self) -> None:
        self.keys = self._read(keys_only=False)

    def _adopt(self, key: bytes) -> None:
        answer = self._post("/v3/kv/range", {"key": _b64(key)})
        for kv in answer.get("kvs", []):
            self.keys[key] = (int(kv["mod_revision"]), kv.get("value", ""))

    def reset(self) -> int:
        """Back to the recorded state; the number of keys deleted or restored."""
        changed = 0
        restored: set[bytes] = set()
        for changed_passes in range(PASSES):
            now = self._read(keys_only=True)
            ops = [{"request_delete_range": {"key": _b64(key)}} for key in now if key not in self.keys]
            for key in [key for key, (revision, _) in self.keys.items() if now.get(key, (None,))[0] != revision]:
                if key in now and key in restored:
                    # Restored once and rewritten again (aggregated ClusterRoles): the control plane's, not a test's.
                    self._adopt(key)
                else:
                    ops.append({"request_put": {"key": _b64(key), "value": self.keys[key][1]}})
                    restored.add(key)
            if not ops:
                return changed
            for start in range(0, len(ops), TXN_OPS):
                self._post("/v3/kv/txn", {"success": ops[start:start + TXN_OPS]})
            changed += len(ops)
            # A restored key gets a new revision: what it holds now is the recorded value.
            after = self._read(keys_only=True)
            for key, (revision, value) in list(self.keys.items()):
                if key in after:
                    self.keys[key] = (after[key][0], value)
            time.sleep(0.1 * (1 + changed_passes))
        keys = sorted({next(iter(op.values()))["key"] for op in ops})
        raise RuntimeError(f"etcd did not settle after {PASSES} resets: controllers keep writing "
                           f"{', '.join(base64.b64decode(k).decode(errors='replace') for k in keys[:20])}")
