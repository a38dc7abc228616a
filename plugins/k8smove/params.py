"""JSON schemas of the DAG params (one dict per param: default, description and schema keywords).

Airflow validates each param against its schema when a run is triggered (UI form, CLI, REST API), so what a
schema can say is refused before any task runs; cross-field and cluster-dependent checks (unknown keys,
source == target, node existence) are Preflight's. Plain dicts, so this module imports nothing heavy.
"""
from __future__ import annotations

from k8smove.labels import (
    LABEL_KEY_OR_REMOVAL_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    NODE_NAME_PATTERN,
    whole,
)

DEFAULT_IMAGES = {"app": "kubesim-demo-app:1.0", "db": "postgres:16"}
DEFAULT_STORAGE = {"class": "standard", "size": "1Gi"}

_LABEL_VALUE = {"type": "string", "pattern": LABEL_VALUE_PATTERN, "maxLength": 63}
_SELECTOR = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": {"pattern": LABEL_KEY_PATTERN, "maxLength": 317},
    "additionalProperties": _LABEL_VALUE,
}
_OPTIONAL_SELECTOR = {**_SELECTOR, "type": ["object", "null"], "default": None}
_IMAGE = {"type": "string", "pattern": whole(r"[a-z0-9][a-z0-9._/:@-]*"), "maxLength": 255}

NAMESPACE = {
    "default": "default",
    "title": "Namespace",
    "description": "Namespace of the release's objects.",
    "type": "string",
    "pattern": whole(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"),
    "maxLength": 63,
}
RELEASE = {
    "default": "demo",
    "title": "Release",
    "description": "Release name: prefix of every object name and app.kubernetes.io/instance.",
    "type": "string",
    "pattern": whole(r"[a-z]([-a-z0-9]*[a-z0-9])?"),
    "maxLength": 40,
}
TIMEOUT_SECONDS = {
    "default": 600,
    "title": "Timeout (seconds)",
    "description": "How long the rollout may take before the run fails (and a migration rolls back).",
    "type": "integer",
    "minimum": 10,
    "maximum": 7200,
}

DRY_RUN = {"default": False, "title": "Dry run", "type": "boolean"}

DEPLOY_PARAMS = {
    "namespace": NAMESPACE,
    "release": RELEASE,
    "label_nodes": {
        "default": {"node1": {"demo": "node1"}, "node2": {"demo": "node2"}},
        "title": "Node labels to set",
        "description": 'Node name -> labels to set on it; a key ending in "-" removes that label.',
        "type": "object",
        "propertyNames": {"pattern": NODE_NAME_PATTERN, "maxLength": 253},
        "additionalProperties": {
            "type": "object",
            "propertyNames": {"pattern": LABEL_KEY_OR_REMOVAL_PATTERN, "maxLength": 318},
            "additionalProperties": {"anyOf": [_LABEL_VALUE, {"type": "null"}]},
        },
    },
    "node_label": {
        **_OPTIONAL_SELECTOR,
        "title": "Place on nodes labelled",
        "description": 'Node selector for the App and DB pods, e.g. {"demo": "node1"}; required for a new release. '
                       "For a release that exists, leave it empty (null) to keep it where it runs (a re-deploy of "
                       "images or replicas); another selector moves it, with a move's probe and rollback.",
    },
    "external_ip": {
        "default": "10.192.0.1",
        "title": "External IP",
        "description": "Address the Service is exposed on: one of the nodes' or in a range declared routed to "
                       "the cluster ([k8smove] external_ip_ranges), not one another Service uses at this port (nor a "
                       "loopback, link-local or unspecified address, which Kubernetes refuses). The default is "
                       "the demo cluster's.",
        "type": "string",
        "format": "ipv4",
    },
    "port": {
        "default": 8080,
        "title": "Port",
        "description": "Service port: the app answers at http://<external_ip>:<port>.",
        "type": "integer",
        "minimum": 1,
        "maximum": 65535,
    },
    "images": {
        "default": DEFAULT_IMAGES,
        "title": "Images",
        "description": 'The App\'s and the DB\'s container images, e.g. {"app": "kubesim-demo-app:1.0", "db": '
                       '"postgres:16"}; the DB image must be PostgreSQL\'s (or compatible) for the switchover.',
        "type": "object",
        "properties": {"app": _IMAGE, "db": _IMAGE},
        "required": ["app", "db"],
        "additionalProperties": False,
    },
    "replicas": {
        "default": 1,
        "title": "App replicas",
        "description": "Replicas of the App (the DB always runs one).",
        "type": "integer",
        "minimum": 1,
        "maximum": 10,
    },
    "storage": {
        "default": DEFAULT_STORAGE,
        "title": "DB storage",
        "description": "StorageClass (network-attached, so data follows the pod) and size of the DB volume.",
        "type": "object",
        "properties": {
            "class": {"type": "string", "pattern": whole(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"), "maxLength": 253},
            "size": {"type": "string", "pattern": whole(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?")},
        },
        "required": ["class", "size"],
        "additionalProperties": False,
    },
    "timeout_seconds": TIMEOUT_SECONDS,
    "dry_run": {
        **DRY_RUN,
        "description": "Check the deploy (preflight) and show what it would change (server-side dry runs of the "
                       "node labels and the manifests); change nothing.",
    },
}

DB_STRATEGY = {
    "default": "switchover",
    "title": "How the DB moves",
    "description": "switchover: a streaming standby on the target, caught up, then promoted and switched to; "
                   "writes wait only for the switch and the data is copied, so any storage class (node-local too) "
                   "works. recreate: the DB is stopped, then started on the target with its volume "
                   "(network-attached storage only; writes wait for the stop, the attach and the start).",
    "type": "string",
    "enum": ["switchover", "recreate"],
}

MIGRATE_PARAMS = {
    "namespace": NAMESPACE,
    "release": RELEASE,
    "node_label": {
        **_SELECTOR,
        "default": {"demo": "node2"},
        "title": "Move to nodes labelled",
        "description": "Target node selector; the current placement is read from the cluster.",
    },
    "timeout_seconds": TIMEOUT_SECONDS,
    "components": {
        "default": ["app", "db"],
        "title": "Components",
        "description": "Which components to move.",
        "type": "array",
        "items": {"type": "string", "enum": ["app", "db"]},
        "minItems": 1,
        "uniqueItems": True,
    },
    "db_strategy": DB_STRATEGY,
    "dry_run": {
        **DRY_RUN,
        "description": "Check the move (preflight) and show what it would change (a server-side dry-run apply "
                       "of the re-rendered manifests); change nothing and start no probe.",
    },
}

MAINTENANCE_LABEL = {
    **_SELECTOR,
    "default": {"maintenance": "scheduled"},
    "title": "Nodes labelled",
    "description": "Label selector of the nodes to take into maintenance.",
}

NODE_MAINTENANCE_PARAMS = {
    "maintenance_label": MAINTENANCE_LABEL,
    "target_selector": {
        **_OPTIONAL_SELECTOR,
        "title": "Move to nodes labelled",
        "description": "Label selector of the pool the moved workloads go to; empty: any other Ready, "
                       "schedulable node. A release k8smove deployed moves whole (App and DB, with its probe "
                       "and rollback) to its node_label with these keys replaced: {\"demo\": \"node2\"} moves "
                       "a release placed on demo=node1 to the nodes labelled demo=node2.",
    },
    "release_targets": {
        "default": None,
        "type": ["object", "null"],
        "title": "Move these releases to nodes labelled",
        "description": 'Per release ("namespace/release") the node_label it moves to, e.g. {"default/demo": '
                       '{"demo": "node2"}}; releases not named here get their node_label with target_selector\'s '
                       'keys replaced.',
        "propertyNames": {"pattern": whole(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z]([-a-z0-9]*[a-z0-9])?"),
                          "maxLength": 104},
        "additionalProperties": _SELECTOR,
    },
    "extra_selector": {
        **_OPTIONAL_SELECTOR,
        "title": "Also move workloads labelled",
        "description": "Deployments/StatefulSets (any namespace) to move like k8smove's own, besides those "
                       "labelled app.kubernetes.io/managed-by=k8smove.",
    },
    "ready_label": {
        **_SELECTOR,
        "default": {"maintenance": "ready"},
        "title": "Label set when empty",
        "description": "Labels set on the nodes once nothing but DaemonSet and mirror pods runs on them.",
    },
    "db_strategy": DB_STRATEGY,
    "allow_local_storage": {
        "default": False,
        "title": "Evict pods with emptyDir volumes",
        "description": "Evict pods whose emptyDir data would be lost; otherwise they are reported and stay.",
        "type": "boolean",
    },
    "dry_run": {**DRY_RUN, "description": "Log the plan (which workloads go where, what is evicted) and write nothing."},
    "timeout_seconds": {**TIMEOUT_SECONDS, "description": "How long each workload's move may take."},
    "eviction_timeout_seconds": {
        "default": 120,
        "title": "Eviction timeout (seconds)",
        "description": "How long an eviction a PodDisruptionBudget refuses is retried before it is reported.",
        "type": "integer",
        "minimum": 5,
        "maximum": 3600,
    },
}

END_MAINTENANCE_PARAMS = {
    "maintenance_label": {**MAINTENANCE_LABEL, "default": {"maintenance": "ready"},
                          "description": "Label selector of the nodes to bring back; the label is removed."},
}
