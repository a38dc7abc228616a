"""``python -m kubesim fault …``: add, list and clear faults of a running kubesim over its admin endpoint.

The server and credentials come from the kubeconfig (--kubeconfig, else $KUBECONFIG, else ~/.kube/config): kubesim's
API server, or the faults proxy in front of the real one (a cluster started with api_faults / --api-faults). One
subcommand per fault kind, made from faults.FAULT_KINDS: required parameters are positional, the
others options, e.g. ``fault node-not-ready node2``, ``fault api-error --resource pods --code 429
--fraction 0.5``, ``fault clear f3``, ``fault clear --kind node-not-ready``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .faults import ADMIN_PATH, FAULT_KINDS


def request(kubeconfig: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One admin request with the kubeconfig's server and credentials (token, client certificate, CA), as the
    kubernetes client reads them: kubesim's API server and the faults proxy of the real one alike."""
    from kubernetes import config
    from kubernetes.client.exceptions import ApiException

    api_client = config.new_client_from_config(config_file=kubeconfig)
    try:
        response = api_client.call_api(path, method, header_params={"Content-Type": "application/json",
                                                                    "Accept": "application/json"},
                                       body=body, auth_settings=["BearerToken"], _preload_content=False,
                                       _return_http_data_only=True, _request_timeout=30)
        return response.status, json.loads(response.data or b"{}")
    except ApiException as error:
        try:
            return error.status, json.loads(error.body or b"{}")
        except ValueError:
            return error.status, {"error": f"{error.status} {error.reason}: {error.body!r}"}
    finally:
        api_client.close()


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
