"""The real API server's audit log as kubesim's request log: what clients asked, in the entries kubesim's own
API server records (method, path, query, status, verb, resource, subresource, namespace, name, user_agent), so
tests that prove "nothing was written before the refusal" read the same record on either control plane.

The policy leaves out the cluster's own machinery (controller-manager, scheduler, kube-proxy, the nodes, the
controllers' service accounts, kubesim's provisioner): what is left is what users and their tools sent.
"""
from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
import uuid
from urllib.parse import parse_qs, urlsplit

POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
    # One event a request, when its response is complete (a watch's when it ends).
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "None", "users": ["system:kube-controller-manager", "system:kube-scheduler", "system:kube-proxy",
                                    "system:apiserver", "kubesim-provisioner"]},
        {"level": "None", "userGroups": ["system:nodes", "system:serviceaccounts:kube-system"]},
        {"level": "Metadata"},
    ],
}
# The HTTP method each audit verb comes from (connect subresources such as exec keep their own: GET or POST).
METHODS = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT", "patch": "PATCH",
           "delete": "DELETE", "deletecollection": "DELETE"}
MARK_AGENT = "kubesim-audit-mark/"    # the requests sync() makes to find the end of the log
KUBESIM_AGENTS = ("kubesim",)          # kubesim's own clients (its admin store, proxy, provisioner)
SYNC_TIMEOUT = 10.0


def apiserver_args(work_dir: str) -> list[str]:
    """kube-apiserver flags writing the audit log to <work_dir>/audit.log (JSON lines) under POLICY."""
    policy = os.path.join(work_dir, "audit-policy.json")
    with open(policy, "w") as f:
        json.dump(POLICY, f)
    return [f"--audit-policy-file={policy}", f"--audit-log-path={os.path.join(work_dir, 'audit.log')}",
            "--audit-log-format=json", "--audit-log-mode=blocking"]


def entry_of(event: dict) -> dict:
    """One audit event as a request log entry of kubesim's own API server."""
    uri = urlsplit(event.get("requestURI", ""))
    ref = event.get("objectRef") or {}
    started, ended = event.get("requestReceivedTimestamp"), event.get("stageTimestamp")
    return {"method": METHODS.get(event.get("verb", ""), event.get("verb", "").upper()), "path": uri.path,
            "query": {k: v[-1] for k, v in parse_qs(uri.query, keep_blank_values=True).items()},
            "status": (event.get("responseStatus") or {}).get("code", 0), "verb": event.get("verb", ""),
            "resource": ref.get("resource", ""), "subresource": ref.get("subresource"),
            "namespace": ref.get("namespace"), "name": ref.get("name"), "user_agent": event.get("userAgent", ""),
            "user": (event.get("user") or {}).get("username", ""), "started": started, "ended": ended}


class AuditLog:
    """The requests clients made since the last clear(), read from the API server's audit log."""

    def __init__(self, path: str, url: str, context: ssl.SSLContext) -> None:
        self.path, self.url, self.context = path, url, context
        self.offset = 0

    def sync(self) -> int:
        """The log's length once every request answered before this call is in it: a marked request is made and
        the log read until that request's event is there (the API server writes an event after its response)."""
        mark = MARK_AGENT + uuid.uuid4().hex
        request = urllib.request.Request(f"{self.url}/version", headers={"User-Agent": mark})
        with urllib.request.urlopen(request, timeout=SYNC_TIMEOUT, context=self.context) as resp:
            resp.read()
        deadline = time.monotonic() + SYNC_TIMEOUT
        needle = mark.encode()
        while True:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            at = data.find(needle)
            if at >= 0:
                return self.offset + data.index(b"\n", at) + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"the audit log {self.path} did not record a request within {SYNC_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def entries(self) -> list[dict]:
        end = self.sync()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            lines = f.read(end - self.offset).splitlines()
        result = []
        for line in lines:
            entry = entry_of(json.loads(line))
            if not entry["user_agent"].startswith(KUBESIM_AGENTS):
                result.append(entry)
        return result

    def clear(self) -> None:
        self.offset = self.sync()
