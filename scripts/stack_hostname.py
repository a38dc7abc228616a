"""``[core] hostname_callable`` of a local distributed stack: each Celery worker names itself as a machine would."""
from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("K8SMOVE_STACK_HOSTNAME") or socket.getfqdn()
