"""docker-compose.yaml, docker/ and .env.example: Airflow 3.3.2 on LocalExecutor with PostgreSQL, our code and
the user's kubeconfig mounted read-only, and every credential coming from .env; with the profile celery (and
AIRFLOW_EXECUTOR=CeleryExecutor) a Redis broker and scalable Celery workers, with the profile flower Flower.

No Docker engine is needed: the files are read with PyYAML and checked against what compose does with them
(YAML merge keys, `${VAR}` interpolation from .env, profiles). The default kubernetes_default connection is
checked by the provider's KubernetesHook against kubesim; airflow-init's executor/broker check is run by bash.
"""
from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
KIND_OVERRIDE = ROOT / "docker" / "compose.kind.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
AIRFLOW_VERSION = "3.3.2"
# Airflow component -> (service, command) — the official compose's names.
COMPONENTS = {"api-server": "airflow-apiserver", "scheduler": "airflow-scheduler",
              "dag-processor": "airflow-dag-processor", "triggerer": "airflow-triggerer"}
AIRFLOW_SERVICES = [*COMPONENTS.values(), "airflow-init"]
# Profile -> the services it adds to `docker compose up` (the official compose's names).
PROFILES = {"celery": {"redis", "airflow-worker"}, "flower": {"flower"}}
BROKER_URL = "redis://redis:6379/0"
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
KUBECONFIG_TARGET = "/opt/airflow/.kube/config"
CODE_MOUNTS = {"./dags": "/opt/airflow/dags", "./plugins": "/opt/airflow/plugins",
               "./include": "/opt/airflow/include"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error} — but not $${...} (for the shell).
USERINFO = re.compile(r"://(\$\{[^}]*\}|[^:@/]*):(\$\{[^}]*\}|[^@/]*)@")
REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def references(text: str) -> list[tuple[str, str | None]]:
    """(variable, operator) of every interpolation; operator None, "?" or ":?" means no default."""
    return [(name, op) for name, op, _ in REFERENCE.findall(text)] if text else []


def interpolated_text(document) -> str:
    """Every key and value compose interpolates (comments are not), one per line."""
    if isinstance(document, dict):
        return "\n".join(f"{k}\n{interpolated_text(v)}" for k, v in document.items())
    if isinstance(document, list):
        return "\n".join(interpolated_text(v) for v in document)
    return "" if document is None else str(document)


def required_variables(text: str) -> set[str]:
    return {name for name, op in references(text) if op in ("", "?", ":?")}


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=value: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


def interpolate(value: str, env: dict[str, str]) -> str:
    """What compose makes of ``value`` with ``env`` (the shell environment and .env): ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, and $$ for a literal $."""
    def substitute(match: re.Match) -> str:
        name, op, argument = match.groups()
        assert op not in ("+", ":+"), f"${{{name}{op}...}}: not used here"
        if op in (":-", ":?") and not env.get(name) or op in ("-", "?") and name not in env:
            assert op in (":-", "-"), f"compose refuses to start: {name}: {argument}"
            return argument
        assert name in env or op, f"{name} is unset: compose substitutes an empty string"
        return env.get(name, "")
    return REFERENCE.sub(substitute, value).replace("$$", "$")


def selected(services: dict, *profiles: str) -> set[str]:
    """The services `docker compose [--profile P]... up` starts: those without profiles and those of an enabled
    profile. Like compose, refuses a selection where a started service depends on one that is not."""
    names = {name for name, service in services.items()
             if not service.get("profiles") or set(service["profiles"]) & set(profiles)}
    for name in names:
        missing = set(services[name].get("depends_on") or ()) - names
        assert not missing, f"profiles {profiles}: {name} depends on disabled {sorted(missing)}"
    return names


def mounts(service: dict) -> list[dict]:
    """Volumes in long syntax: {type, source, target, read_only}."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *options = volume.split(":")
            result.append({"type": "bind" if source.startswith((".", "/", "~", "$")) else "volume",
                           "source": source, "target": target, "read_only": "ro" in ",".join(options).split(",")})
        else:
            result.append(volume)
    return result


def test_compose_file_parses_with_the_official_airflow_3_layout(compose, services):
    assert "x-airflow-common" in compose                # the official anchor, merged into every Airflow service
    assert selected(services) == {"postgres", *AIRFLOW_SERVICES}            # `docker compose up`, no profile
    assert set(services) == {"postgres", *AIRFLOW_SERVICES, *set().union(*PROFILES.values())}
    for service in AIRFLOW_SERVICES:
        assert services[service]["image"] == compose["x-airflow-common"]["image"], service
        # LocalExecutor unless AIRFLOW_EXECUTOR says otherwise, and .env.example does not.
        assert interpolate(services[service]["environment"]["AIRFLOW__CORE__EXECUTOR"], {}) == "LocalExecutor", service
        assert interpolate(services[service]["environment"]["AIRFLOW__CORE__EXECUTOR"], env_file(ENV_EXAMPLE)) \
            == "LocalExecutor", service
    assert "postgres-db-volume" in compose["volumes"]


def test_every_component_runs_with_a_healthcheck_after_postgres_and_init(services):
    for command, name in COMPONENTS.items():
        service = services[name]
        assert service["command"] == command, name
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "always", name
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                         "airflow-init": {"condition": "service_completed_successfully"}}, name
    assert services["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["airflow-apiserver"]["ports"] == ["${AIRFLOW_API_PORT:-8080}:8080"]
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    for name, job in (("airflow-dag-processor", "DagProcessorJob"), ("airflow-triggerer", "TriggererJob")):
        assert f"--job-type {job}" in " ".join(services[name]["healthcheck"]["test"])


def test_init_migrates_the_db_and_creates_the_admin_user(services):
    init = services["airflow-init"]
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init["environment"]["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert init["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "/entrypoint airflow version" in init["command"][-1]
    assert services["airflow-apiserver"]["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
        "http://airflow-apiserver:8080/execution/"


def test_code_is_mounted_read_only_and_the_kubeconfig_too(services):
    for name in AIRFLOW_SERVICES:
        by_target = {m["target"]: m for m in mounts(services[name])}
        for source, target in CODE_MOUNTS.items():
            assert by_target[target]["source"] == source and by_target[target]["read_only"] is True, (name, target)
        kubeconfig = by_target[KUBECONFIG_TARGET]
        assert kubeconfig["type"] == "bind" and kubeconfig["read_only"] is True, name
        assert references(kubeconfig["source"]) == [("KUBECONFIG_PATH", ":-")], name
        assert kubeconfig["bind"]["create_host_path"] is False, name   # a wrong path fails, no empty dir
        assert services[name]["environment"]["KUBECONFIG"] == KUBECONFIG_TARGET


def test_image_is_the_official_3_3_2_extended_with_requirements_txt(compose):
    build = compose["x-airflow-common"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    instructions = [line for line in DOCKERFILE.read_text().splitlines() if line and not line.startswith("#")]
    assert instructions[0] == f"FROM apache/airflow:{AIRFLOW_VERSION}"
    assert any(line.startswith("COPY requirements.txt ") for line in instructions)
    assert any(line.startswith("RUN pip install") and "-r /requirements.txt" in line
               and '"apache-airflow==${AIRFLOW_VERSION}"' in line for line in instructions)
    assert f"apache-airflow=={AIRFLOW_VERSION}" in (ROOT / "requirements.txt").read_text().splitlines()
    # The build context is the repo root: its own ignore file keeps .venv/ and the rest out of it.
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert [p for p in ignore if not p.startswith("#")][-2:] == ["*", "!requirements.txt"]


def test_no_literal_secret_every_credential_is_a_variable_without_default(services):
    checked = 0
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), f"{name}: {key}={value!r}"
                checked += 1
            for _, password in USERINFO.findall(value):                   # user:password@ in a URL
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", password), f"{name}: {key} holds a password"
                checked += 1
    assert checked >= 10
    # Nothing that looks like a credential anywhere else in the file either.
    for line in COMPOSE.read_text().splitlines():
        if re.search(r"(?i)(password|secret|fernet)\w*\s*[:=]\s*\S", line) and not line.lstrip().startswith("#"):
            assert "${" in line, line


def test_env_example_defines_every_variable_without_a_default(compose):
    text = interpolated_text(compose)
    assert not re.search(r"(?<!\$)\$[A-Za-z_]", text), "use ${VAR}, not $VAR (or $$ for the shell)"
    required = required_variables(text)
    assert {"POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
            "AIRFLOW_ADMIN_PASSWORD"} <= required
    example = env_file(ENV_EXAMPLE)
    assert required - set(example) == set()
    assert "KUBECONFIG_PATH" in example                                   # the one setting everyone changes
    for key in required:
        if SECRET_NAME.search(key):
            assert example[key] == "change-me", f"{key}: a placeholder, never a usable secret"
    documented = set(example) | set(re.findall(r"^#([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert {name for name, _ in references(text)} - documented == set()


def test_env_is_git_ignored():
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_default_connection_points_at_the_mounted_kubeconfig(services):
    from airflow.models.connection import Connection

    value = services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_KUBERNETES_DEFAULT"]
    [(name, op, default)] = REFERENCE.findall(value)
    assert (name, op) == ("AIRFLOW_CONN_KUBERNETES_DEFAULT", ":-")
    connection = Connection(conn_id="kubernetes_default", uri=default)
    assert connection.conn_type == "kubernetes"
    assert connection.extra_dejson == {"kube_config_path": KUBECONFIG_TARGET}


def test_that_connection_form_gets_the_operators_a_client(cluster, monkeypatch, services):
    """The same URI with kubesim's kubeconfig in place of the mounted one: the hook lists the nodes."""
    from kubernetes.client import CoreV1Api

    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    [(_, _, default)] = REFERENCE.findall(services["airflow-triggerer"]["environment"]
                                          ["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    uri = default.replace(KUBECONFIG_TARGET, cluster.kubeconfig_path)
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", uri)
    api = KubernetesHook(conn_id="kubernetes_default").get_conn()
    assert sorted(n.metadata.name for n in CoreV1Api(api).list_node().items) == ["node1", "node2"]


def test_kind_override_joins_the_kind_network():
    override = yaml.safe_load(KIND_OVERRIDE.read_text())
    assert override == {"networks": {"default": {"name": "kind", "external": True}}}


def test_airflow_reacts_as_fast_as_the_local_stacks(services):
    """The settings scripts/airflow_stack.py ships to the tests, the benchmarks and make ui hold in compose too."""
    from scripts.airflow_stack import FAST_REACTION

    for name, service in services.items():
        if name.startswith("airflow-"):
            env = service.get("environment") or {}
            assert {k: env.get(k) for k in FAST_REACTION} == FAST_REACTION, name


# --- CeleryExecutor: profiles celery and flower ----------------------------------------------------------

def test_no_profile_is_exactly_the_local_executor_stack(services):
    """`docker compose up` starts what it started before the profiles existed, with the executor it had."""
    default = selected(services)
    assert default == {"postgres", *AIRFLOW_SERVICES}
    for name in default:
        assert "profiles" not in services[name], name
        assert not set(services[name].get("depends_on") or ()) - default, name
    for name, service in services.items():                              # every Airflow container agrees
        if "environment" in service and name != "postgres":
            assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}", name
            assert interpolate(service["environment"]["AIRFLOW__CORE__EXECUTOR"],
                               {"AIRFLOW_EXECUTOR": "CeleryExecutor"}) == "CeleryExecutor", name
    assert "AIRFLOW_EXECUTOR" not in env_file(ENV_EXAMPLE)                # documented, commented out
    assert "#AIRFLOW_EXECUTOR=CeleryExecutor" in ENV_EXAMPLE.read_text().splitlines()


def test_celery_profile_adds_redis_and_workers_and_flower_its_own_profile(services):
    default = selected(services)
    assert selected(services, "celery") == default | PROFILES["celery"]
    assert selected(services, "celery", "flower") == default | PROFILES["celery"] | PROFILES["flower"]
    for profile, added in PROFILES.items():
        for name in added:
            assert services[name]["profiles"] == [profile], name
    with pytest.raises(AssertionError, match="flower depends on disabled"):   # Flower needs the broker
        selected(services, "flower")


def test_celery_settings_are_common_broker_redis_results_in_the_metadata_db(compose, services):
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__CELERY__BROKER_URL"] == BROKER_URL
    assert BROKER_URL.startswith(f"redis://redis:{services['redis']['expose'][0]}/")   # the service, its port
    # db+ + the metadata DB's own URL (SQLAlchemy's default driver for postgresql is psycopg2).
    assert common["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] \
        .replace("postgresql+psycopg2://", "postgresql://", 1)
    assert "@postgres/" in common["AIRFLOW__CELERY__RESULT_BACKEND"]
    for name, service in services.items():
        if name not in ("postgres", "redis"):
            for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY__BROKER_URL",
                        "AIRFLOW__CELERY__RESULT_BACKEND"):
                assert service["environment"][key] == common[key], (name, key)
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["restart"] == "always"
    assert "ports" not in redis                                          # the broker is not published


def test_workers_are_the_scheduler_with_command_celery_worker_and_scale(services):
    worker, scheduler = services["airflow-worker"], services["airflow-scheduler"]
    assert worker["command"] == "celery worker"
    health = " ".join(worker["healthcheck"]["test"])
    assert worker["healthcheck"]["test"][0] == "CMD-SHELL"
    assert f'celery --app {CELERY_APP} inspect ping -d "celery@$${{HOSTNAME}}"' in health
    assert worker["restart"] == "always"
    assert worker["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "redis": {"condition": "service_healthy"},
                                    "airflow-apiserver": {"condition": "service_healthy"},
                                    "airflow-init": {"condition": "service_completed_successfully"}}
    # `--scale airflow-worker=N`: nothing two containers could not share.
    assert not {"container_name", "hostname", "ports", "deploy"} & set(worker)
    # The tasks run in the workers instead of the scheduler: same image, code, kubeconfig, network, user.
    for key in ("image", "build", "volumes", "user", "extra_hosts"):
        assert worker[key] == scheduler[key], key
    assert worker["environment"] == {**scheduler["environment"], "DUMB_INIT_SETSID": "0"}   # warm shutdown
    # Reports: one host directory for the scheduler and every worker (several machines: an s3:// URL).
    report_dir = worker["environment"]["K8SMOVE_REPORT_DIR"]
    [shared] = [m for m in mounts(worker) if m["target"] == report_dir]
    assert shared["type"] == "bind" and shared["source"] == "./reports" and not shared["read_only"]
    assert shared in mounts(scheduler)


def test_flower_is_celery_flower_on_loopback(services):
    flower = services["flower"]
    assert flower["command"] == "celery flower"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]                   # no login: this host only
    assert "localhost:5555" in " ".join(flower["healthcheck"]["test"])
    assert flower["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "redis": {"condition": "service_healthy"},
                                    "airflow-init": {"condition": "service_completed_successfully"}}


def test_the_celery_commands_and_app_exist_in_the_celery_provider():
    """What the worker, its healthcheck and flower run (the official image ships the celery provider)."""
    import importlib

    from celery import Celery
    from scripts.local_airflow import AIRFLOW

    module, _, attribute = CELERY_APP.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), attribute), Celery)
    for command in ("worker", "flower"):
        result = subprocess.run([AIRFLOW, "celery", command, "--help"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0 and f"airflow celery {command}" in result.stdout, result.stderr[-2000:]


def executor_check(services) -> str:
    """airflow-init's CeleryExecutor check, as bash runs it (compose's $$ unescaped)."""
    lines = services["airflow-init"]["command"][-1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('if [[ "$${AIRFLOW__CORE__EXECUTOR}"'))
    block = lines[start:lines.index("fi", start) + 1]
    assert references("\n".join(block)) == []                           # nothing compose would substitute
    assert start < next(i for i, line in enumerate(lines) if "/entrypoint" in line)   # before Airflow starts
    return "\n".join(block).replace("$$", "$")


def run_executor_check(services, executor: str, broker_url: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW__CORE__EXECUTOR": executor, "AIRFLOW__CELERY__BROKER_URL": broker_url,
           "CONNECTION_CHECK_MAX_COUNT": "2", "CONNECTION_CHECK_SLEEP_TIME": "0"}
    return subprocess.run(["bash", "-c", executor_check(services)], env=env, capture_output=True, text=True,
                          timeout=30)


def test_celery_executor_without_the_celery_profile_stops_airflow_init(services):
    """AIRFLOW_EXECUTOR=CeleryExecutor without --profile celery: no broker, so airflow-init fails and nothing
    that depends on it (every component) starts; tasks are never queued with no worker to run them."""
    no_broker = run_executor_check(services, "CeleryExecutor", BROKER_URL)    # `redis` resolves in compose only
    assert no_broker.returncode == 1
    assert "no Celery broker answers at redis:6379" in no_broker.stdout and "--profile celery" in no_broker.stdout
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert run_executor_check(services, "CeleryExecutor", f"redis://127.0.0.1:{port}/0").returncode == 1
    with socket.create_server(("127.0.0.1", 0)) as broker:
        port = broker.getsockname()[1]
        ok = run_executor_check(services, "CeleryExecutor", f"redis://127.0.0.1:{port}/0")
        assert ok.returncode == 0 and f"Celery broker at 127.0.0.1:{port}" in ok.stdout, ok.stdout + ok.stderr
    local = run_executor_check(services, "LocalExecutor", BROKER_URL)          # the default checks nothing
    assert local.returncode == 0 and local.stdout == "", local.stdout + local.stderr
    assert all("depends_on" in services[n] and services[n]["depends_on"].get("airflow-init") ==
               {"condition": "service_completed_successfully"} for n in [*COMPONENTS.values(), "airflow-worker"])
