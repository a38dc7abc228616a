"""Move a release's PostgreSQL without a write outage: a planned switchover to a streaming standby on the target.

CloudNativePG's sequence, every step through the API server (pods/exec, server-side apply), so the worker needs
no route to the database (issue 11). The DB is instances: instance n is one Deployment and one claim
(``<release>-db`` for 0, ``<release>-db-<n>`` after), and the DB Service selects the serving one by the pod label
``k8smove.io/db-instance``. A move of the DB to other nodes:

1. plan: the serving instance must be a primary that can feed a standby (``check_primary``).
2. begin: the replication role and its pg_hba line on the primary (``prepare_primary``), then instance n+1 on the
   target, whose init container copies the primary (pg_basebackup -R) so it starts as its streaming standby.
3. the engine's rollout wait: the App and the standby Ready.
4. ``switch_over``: catch-up, then the fence (phase ``fencing``: instance n scaled to 0; its clean fast shutdown
   sends every WAL record to the standby), the standby has replayed all of it, promotion (``promoted``), the
   Service selects n+1 (``switched``). Writes wait only from the fence to the switch.
5. commit: instance n's Deployment goes; its claim is kept (``retired``) until the run has verified the rows.

The point of no return is the Service's selector, read live: until it selects n+1 no write can have reached the
new instance, so a rollback deletes it and starts n again (``service_switched``), the only primary either way.
"""
from __future__ import annotations

import base64
import logging
import time

from kubernetes.client import ApiClient

from k8smove import LABEL_COMPONENT, LABEL_INSTANCE, K8sMoveError, kube, release_selector

log = logging.getLogger(__name__)

LABEL_DB_INSTANCE = "k8smove.io/db-instance"
LABEL_RETIRED = "k8smove.io/retired-db-instance"   # a claim kept until the run has verified the rows
REPLICATION_USER = "k8smove_replication"
DB_CONTAINER = "db"
STRATEGIES = ("switchover", "recreate")
CATCH_UP_SECONDS = 60          # the standby streaming and within MAX_LAG_BYTES of the primary
MAX_LAG_BYTES = 16 * 1024 * 1024
FENCE_SECONDS = 60             # the old primary's pod gone (terminationGracePeriodSeconds 10, plus the kubelet's)
REPLAY_SECONDS = 60            # the standby has replayed what the old primary wrote
PHASES = ("applied", "fencing", "promoted", "switched")
# The fence's and the replay's polls start at 50 ms and back off to this: a batch switches over many DBs at once,
# and each poll is an API call (a list, or an exec that runs psql in the pod)
MAX_POLL_SECONDS = 0.25
# One line on stdin (a v4 exec cannot close stdin), handed to psql by a shell builtin: SQL and any password in it
# never appear in a process's arguments.
PSQL = ["sh", "-c", 'IFS= read -r sql; printf "%s\\n" "$sql" | '
                    'psql -X -q -v ON_ERROR_STOP=1 -tA -U "${POSTGRES_USER:-postgres}" -d postgres -f -']


def instance_name(release: str, instance: int) -> str:
    return f"{release}-db" if int(instance) == 0 else f"{release}-db-{instance}"


def _deployment(namespace: str, release: str, instance: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"namespace": namespace, "name": instance_name(release, instance)}}


def _claim(namespace: str, release: str, instance: int) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"namespace": namespace, "name": instance_name(release, instance)}}


def is_serving_db(workload: dict, instance: int) -> bool:
    """Whether a workload of the release is the DB instance that serves (App workloads are always)."""
    labels = workload["metadata"].get("labels") or {}
    return labels.get(LABEL_COMPONENT) != "db" or labels.get(LABEL_DB_INSTANCE, "0") == str(instance)


def instance_pods(api: ApiClient, namespace: str, release: str, instance: int) -> list[dict]:
    selector = f"{release_selector(release)},{LABEL_COMPONENT}=db,{LABEL_DB_INSTANCE}={instance}"
    return kube.list_objects(api, "v1", "Pod", namespace, selector)


def _ready_pod(api: ApiClient, namespace: str, release: str, instance: int) -> str:
    for pod in instance_pods(api, namespace, release, instance):
        conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or ()}
        if not pod["metadata"].get("deletionTimestamp") and conditions.get("Ready") == "True":
            return pod["metadata"]["name"]
    raise K8sMoveError(f"DB instance {namespace}/{instance_name(release, instance)} has no Ready pod")


def psql(api: ApiClient, namespace: str, pod: str, sql: str) -> list[str]:
    """``sql`` (one line) run by psql in the pod's DB container, as the image's superuser over its local socket;
    the rows of the last statement, one string each (columns split by ``|``)."""
    if "\n" in sql:
        raise ValueError("psql(): one line of SQL")
    try:
        out = kube.exec_in_container(api, namespace, pod, DB_CONTAINER, PSQL, stdin=sql + "\n")
    except kube.ExecFailed as err:
        raise K8sMoveError(f"DB pod {namespace}/{pod}: {err}") from err
    return [line for line in out.splitlines() if line]


def check_primary(api: ApiClient, namespace: str, release: str, instance: int) -> str:
    """Plan: the serving instance is a primary able to feed a standby; returns its pod. Raises naming the fix."""
    pod = _ready_pod(api, namespace, release, instance)
    in_recovery, wal_level, senders = psql(api, namespace, pod, "SELECT pg_is_in_recovery(), "
                                           "current_setting('wal_level'), current_setting('max_wal_senders')")[0] \
        .split("|")
    problem = ("it is itself a standby" if in_recovery == "t" else
               f"wal_level is {wal_level}" if wal_level not in ("replica", "logical") else
               "max_wal_senders is 0" if int(senders) == 0 else None)
    if problem:
        raise K8sMoveError(f"DB {namespace}/{pod} cannot feed a streaming standby ({problem}); "
                           f"set db_strategy to \"recreate\" to move it stopped instead")
    return pod


def replication_password(api: ApiClient, namespace: str, release: str) -> str:
    secret = kube.get(api, {"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"namespace": namespace, "name": f"{release}-db-replication"}})
    if secret is None or "password" not in (secret.get("data") or {}):
        raise K8sMoveError(f"Secret {namespace}/{release}-db-replication (the standby's login) is missing")
    return base64.b64decode(secret["data"]["password"]).decode()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def prepare_primary(api: ApiClient, namespace: str, release: str, instance: int) -> None:
    """The replication role (its password from the Secret) and a pg_hba line letting it stream; safe to repeat.

    pg_hba.conf is rewritten by the server itself (lo_export as superuser): an exec may run as a user who cannot
    write the file, and its path is whatever the server says (hba_file)."""
    pod = _ready_pod(api, namespace, release, instance)
    password = replication_password(api, namespace, release)
    hba_line = f"\\n# k8smove: streaming standbys for a switchover\\nhost replication {REPLICATION_USER} all " \
               f"scram-sha-256\\n"
    psql(api, namespace, pod, " ".join([
        "DO $$ DECLARE o oid; BEGIN",
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATION_USER}') THEN",
        f"CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN; END IF;",
        f"EXECUTE format('ALTER ROLE {REPLICATION_USER} PASSWORD %L', {_literal(password)});",
        f"IF NOT EXISTS (SELECT FROM pg_hba_file_rules WHERE '{REPLICATION_USER}' = ANY(user_name)",
        "AND 'replication' = ANY(database)) THEN",
        f"o := lo_from_bytea(0, convert_to(pg_read_file(current_setting('hba_file')) || E'{hba_line}', 'UTF8'));",
        "PERFORM lo_export(o, current_setting('hba_file')); PERFORM lo_unlink(o); PERFORM pg_reload_conf();",
        "END IF; END $$;"]))


def _replication_state(api: ApiClient, namespace: str, primary: str, standby: str) -> tuple[str, int] | None:
    rows = psql(api, namespace, primary, "SELECT state, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), "
                f"-1)::bigint FROM pg_stat_replication WHERE application_name = {_literal(standby)}")
    if not rows:
        return None
    state, lag = rows[0].split("|")
    return state, int(lag)


def wait_caught_up(api: ApiClient, namespace: str, release: str, switch: dict,
                   seconds: float = CATCH_UP_SECONDS) -> int:
    """Until the new instance streams from the primary within MAX_LAG_BYTES; returns the lag. Raises on timeout."""
    primary = _ready_pod(api, namespace, release, switch["from"])
    standby = instance_name(release, switch["to"])
    deadline, seen = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        seen = _replication_state(api, namespace, primary, standby)
        if seen and seen[0] == "streaming" and 0 <= seen[1] <= MAX_LAG_BYTES:
            return seen[1]
        time.sleep(0.5)
    raise K8sMoveError(f"standby {namespace}/{standby} did not catch up with {primary} within {seconds:g} s "
                       f"(last seen: {'state %s, %s bytes behind' % seen if seen else 'not connected'}); "
                       f"the primary was not touched")


def _scale(api: ApiClient, namespace: str, name: str, replicas: int) -> None:
    kube.call(api, "PATCH", kube.object_path("apps/v1", "Deployment", namespace, name),
              body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json")


def _standby_replayed(api: ApiClient, namespace: str, pod: str, fence_lsn: str) -> bool | None:
    """True once the standby is promoted, or its primary is gone and it has replayed everything it received,
    at least up to ``fence_lsn``; None before."""
    row = psql(api, namespace, pod, "SELECT pg_is_in_recovery(), coalesce((SELECT status FROM pg_stat_wal_receiver), "
               "'stopped'), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()) >= 0, "
               f"pg_wal_lsn_diff(pg_last_wal_replay_lsn(), {_literal(fence_lsn)}) >= 0")[0].split("|")
    in_recovery, receiver, replayed_received, past_fence = row
    if in_recovery == "f":
        return True
    return True if receiver != "streaming" and replayed_received == "t" and past_fence == "t" else None


def service_switched(api: ApiClient, namespace: str, release: str, instance: int) -> bool:
    """Whether the DB Service selects ``instance``: once it selects a switchover's new one, writes may have reached
    it and only forward is safe; before, the old instance can serve again (the point of no return, read live)."""
    service = kube.get(api, {"apiVersion": "v1", "kind": "Service",
                             "metadata": {"namespace": namespace, "name": f"{release}-db"}})
    return ((service or {}).get("spec", {}).get("selector") or {}).get(LABEL_DB_INSTANCE) == str(instance)


def switch_over(api: ApiClient, namespace: str, release: str, switch: dict, phase: str, advance) -> dict:
    """Steps 4 of the module's sequence from ``phase`` on; ``advance(phase, facts)`` records each phase on the lock
    before its step acts. Returns the step's figures (milliseconds), for the report."""
    figures, old, new = {}, switch["from"], switch["to"]
    standby = instance_name(release, new)
    started = time.monotonic()
    if PHASES.index(phase) < PHASES.index("fencing"):
        figures["standby_lag_bytes"] = wait_caught_up(api, namespace, release, switch)
        primary = _ready_pod(api, namespace, release, old)
        switch = {**switch, "fence_lsn": psql(api, namespace, primary, "SELECT pg_current_wal_lsn()")[0]}
        advance("fencing", {"fence_lsn": switch["fence_lsn"]})
        phase = "fencing"
    fenced_at = time.monotonic()
    if phase == "fencing":
        _scale(api, namespace, instance_name(release, old), 0)
        kube.wait_for(lambda: True if not instance_pods(api, namespace, release, old) else None, FENCE_SECONDS,
                      f"the old primary {namespace}/{instance_name(release, old)} did not stop",
                      max_poll_seconds=MAX_POLL_SECONDS)
        figures["fence_ms"] = round((time.monotonic() - fenced_at) * 1000)
        pod = _ready_pod(api, namespace, release, new)
        kube.wait_for(lambda: _standby_replayed(api, namespace, pod, switch["fence_lsn"]), REPLAY_SECONDS,
                      f"standby {namespace}/{standby} did not replay the old primary's last WAL ({switch['fence_lsn']})",
                      max_poll_seconds=MAX_POLL_SECONDS)
        promoted = psql(api, namespace, pod, "SELECT CASE WHEN pg_is_in_recovery() THEN pg_promote(true, 60) "
                                             "ELSE true END")
        if promoted != ["t"]:
            raise K8sMoveError(f"standby {namespace}/{pod} was not promoted within 60 s")
        advance("promoted", {})
        phase = "promoted"
    if phase == "promoted":
        kube.server_side_apply(api, switch["service"])
        advance("switched", {})
    figures["write_pause_ms"] = round((time.monotonic() - fenced_at) * 1000)
    figures["switchover_ms"] = round((time.monotonic() - started) * 1000)
    log.info("%s/%s: DB switched over from %s to %s: %s", namespace, release, instance_name(release, old), standby,
             figures)
    return figures


def retire(api: ApiClient, namespace: str, release: str, instance: int) -> None:
    """After the switch: the old instance's Deployment goes, its claim is labelled retired (the fallback until the
    run has verified the rows, then ``remove_retired_claims``)."""
    kube.delete(api, _deployment(namespace, release, instance))
    claim = kube.get(api, _claim(namespace, release, instance))
    if claim is not None:
        kube.call(api, "PATCH", kube.object_path("v1", "PersistentVolumeClaim", namespace,
                                                 instance_name(release, instance)),
                  body={"metadata": {"labels": {LABEL_RETIRED: str(instance)}}},
                  content_type="application/merge-patch+json")


def _retired(api: ApiClient, namespace: str, release: str) -> list[dict]:
    return kube.list_objects(api, "v1", "PersistentVolumeClaim", namespace, f"{LABEL_INSTANCE}={release},{LABEL_RETIRED}")


def retired_claims(api: ApiClient, namespace: str, release: str) -> list[str]:
    return [c["metadata"]["name"] for c in _retired(api, namespace, release)]


def remove_retired_claims(api: ApiClient, namespace: str, release: str) -> list[str]:
    """Delete the claims of the release's retired DB instances (call once the rows are verified); their names."""
    claims = _retired(api, namespace, release)
    for claim in claims:
        kube.delete(api, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": claim["metadata"]})
    return [c["metadata"]["name"] for c in claims]


def old_instance_identity(namespace: str, release: str, switch: dict) -> dict:
    """What the engine records the prior state of, beside the manifests: the fence scales it to 0."""
    return _deployment(namespace, release, switch["from"])
