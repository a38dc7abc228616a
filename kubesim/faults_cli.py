"""``python -m kubesim fault …``: add, list and clear faults of a running kubesim over its admin endpoint.

The server comes from the kubeconfig (--kubeconfig, else $KUBECONFIG, else ~/.kube/config). One
subcommand per fault kind, made from faults.FAULT_KINDS: required parameters are positional, the
others options, e.g. ``fault node-not-ready node2``, ``fault api-error --resource pods --code 429
--fraction 0.5``, ``fault clear f3``, ``fault clear --kind node-not-ready``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

import yaml

from .faults import ADMIN_PATH, FAULT_KINDS


def server_of(kubeconfig: str) -> tuple[str, dict]:
    """The current context's server URL and the headers its user authenticates with."""
    with open(kubeconfig) as f:
        config = yaml.safe_load(f)
    context_name = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next((u["user"] for u in config.get("users") or [] if u["name"] == context.get("user")), {})
    headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
    return cluster["server"].rstrip("/"), headers


def request(kubeconfig: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    server, headers = server_of(kubeconfig)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server + path, data=data, method=method,
                                 headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kubesim fault", description="inject or clear kubesim faults")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
                        or os.path.expanduser("~/.kube/config"))
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the active faults")
    clear = sub.add_parser("clear", help="clear one fault by id, or all (optionally of one kind)")
    clear.add_argument("id", nargs="?")
    clear.add_argument("--kind", choices=list(FAULT_KINDS))
    for kind, (description, params) in FAULT_KINDS.items():
        add = sub.add_parser(kind, help=description, description=description)
        for name, param in params.items():
            if param.default is None:
                add.add_argument(name, type=param.type, help=param.help)
            else:
                add.add_argument("--" + name.replace("_", "-"), dest=name, type=param.type, default=param.default,
                                 help=f"{param.help} (default {param.default})")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action == "list":
        status, answer = request(args.kubeconfig, "GET", ADMIN_PATH)
    elif args.action == "clear":
        path = f"{ADMIN_PATH}/{args.id}" if args.id else ADMIN_PATH
        status, answer = request(args.kubeconfig, "DELETE", path, {"kind": args.kind} if args.kind else None)
    else:
        params = {name: getattr(args, name) for name in FAULT_KINDS[args.action][1]}
        status, answer = request(args.kubeconfig, "POST", ADMIN_PATH, {"kind": args.action, **params})
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
