"""The compose file parses, refuses to start without its secrets, and deploys what it says:
a three-broker Kafka cluster replicating every topic three times, the services under their
own database roles, monitoring reachable from the host only. Checked with the docker-compose
that scripts/bootstrap installs (Debian's, v1: `config` renders YAML only, and takes
`--profile`, `--env-file`, `-q` and `--services`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from prometheus_client import REGISTRY

import consumers.metrics
import ingest.metrics

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()

# Every variable the compose file reads: interpolated (`${NAME...}`) or passed through from
# the environment (a key with no value); none may leak in from the shell running the tests.
INTERPOLATED = set(re.findall(r"\$\{(\w+)", COMPOSE_TEXT))
PASSED_THROUGH = {
    name
    for service in yaml.safe_load(COMPOSE_TEXT)["services"].values()
    if isinstance(service.get("environment"), dict)
    for name, value in service["environment"].items()
    if value is None
}
REQUIRED = set(re.findall(r"\$\{(\w+):\?", COMPOSE_TEXT))
# A name that says it holds a secret (KAFKA_SSL_KEYFILE is a path, not a key).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$")


NO_ENV_FILE: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _no_env_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")
    NO_ENV_FILE[:] = [empty]


def compose(
    *args: str, env_file: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is installed by scripts/bootstrap"
    read = INTERPOLATED | PASSED_THROUGH | {"COMPOSE_PROFILES", "COMPOSE_FILE"}
    clean = {k: v for k, v in os.environ.items() if k not in read}
    # never a developer's own .env, which compose would read by itself
    options = ["--env-file", str(env_file or NO_ENV_FILE[0])]
    return subprocess.run(
        [binary, *options, *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    return compose("config", "-q", env=env)


SECRETS = {
    "SIGNATURES_DEDUPE_SECRET": "s" * 48,
    "POSTGRES_PASSWORD": "pw",
    "SIGNATURES_SMTP_PASSWORD": "smtp-pw",
    "SIGNATURES_MASTER_KEY": "dGVzdC1tYXN0ZXIta2V5LTAxMjM0NTY3ODlhYmNkZWY=",
    "SIGNATURES_API_DB_PASSWORD": "api-pw",
    "SIGNATURES_WORKER_DB_PASSWORD": "worker-pw",
    "SIGNATURES_OPERATOR_DB_PASSWORD": "operator-pw",
    "GF_SECURITY_ADMIN_PASSWORD": "grafana-pw",
}


@pytest.mark.integration
@pytest.mark.slow
def test_compose_file_is_valid() -> None:
    done = compose_config(**SECRETS)
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_compose_refuses_to_run_without_a_secret() -> None:
    done = compose_config(**{**SECRETS, "SIGNATURES_DEDUPE_SECRET": ""})
    assert done.returncode != 0
    assert "SIGNATURES_DEDUPE_SECRET" in done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_compose_refuses_to_run_without_the_smtp_password() -> None:
    done = compose_config(**{**SECRETS, "SIGNATURES_SMTP_PASSWORD": ""})
    assert done.returncode != 0
    assert "SIGNATURES_SMTP_PASSWORD" in done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_compose_refuses_to_run_without_the_master_key() -> None:
    done = compose_config(**{**SECRETS, "SIGNATURES_MASTER_KEY": ""})
    assert done.returncode != 0
    assert "SIGNATURES_MASTER_KEY" in done.stderr


def test_only_the_workers_that_read_personal_data_get_the_master_key() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = re.split(r"\n  (?=[a-z-]+:\n)", text.split("\nservices:\n", 1)[1])
    holders = {s.split(":", 1)[0] for s in services if "SIGNATURES_MASTER_KEY:" in s}
    assert holders == {"persist", "mail-worker"}


def test_every_app_service_shares_one_configuration() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ("api:", "persist:", "counter:", "mail-worker:", "migrate:"):
        assert f"\n  {service}" in text
    assert text.count("*signatures-env") >= 5
    assert "service_healthy" in text and "pg_isready" in text


@pytest.mark.integration
@pytest.mark.slow
def test_compose_refuses_to_run_without_the_services_database_passwords() -> None:
    for name in ("SIGNATURES_API_DB_PASSWORD", "SIGNATURES_WORKER_DB_PASSWORD"):
        done = compose_config(**{**SECRETS, name: ""})
        assert done.returncode != 0
        assert name in done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_only_migrate_connects_as_the_owner() -> None:
    binary = shutil.which("docker-compose")
    assert binary
    config = yaml.safe_load(
        subprocess.run(
            [binary, "config"],
            cwd=ROOT,
            env={**os.environ, **SECRETS},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    roles = {
        "api": "signatures_api_login",
        "persist": "signatures_worker_login",
        "counter": "signatures_worker_login",
        "mail-worker": "signatures_worker_login",
        "retention": "signatures_worker_login",
        "operator": "signatures_operator_login",
    }
    for service, user in roles.items():
        env = config["services"][service]["environment"]
        assert "DATABASE_URL" not in env, service
        urls = [v for k, v in env.items() if k.endswith("_DATABASE_URL") and v]
        assert len(urls) == 1 and f"//{user}:" in urls[0], service
    owner = config["services"]["migrate"]["environment"]["DATABASE_URL"]
    assert owner.startswith("postgresql://postgres:")


@pytest.mark.integration
@pytest.mark.slow
def test_monitoring_profile_is_valid() -> None:
    done = compose_config(**SECRETS)
    assert done.returncode == 0, done.stderr
    binary = shutil.which("docker-compose")
    assert binary
    services = subprocess.run(
        [binary, "--profile", "monitoring", "config", "--services"],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert {"prometheus", "grafana", "api", "persist", "counter", "mail-worker"} <= set(services)


def test_dashboard_and_scrape_config_name_only_real_metrics() -> None:
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    known = {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, [])
    }
    dashboard = json.loads((ROOT / "monitoring/grafana/dashboards/signatures.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bsignatures_[a-z_]+", target["expr"])
    }
    assert consumers.metrics.RECORDS and ingest.metrics.SUBMISSIONS  # both registered
    assert len(used) >= 10
    assert used <= known, used - known
    scrape = (ROOT / "monitoring/prometheus.yml").read_text()
    for job in ("api", "persist", "counter"):
        assert f"job_name: {job}" in scrape


# ---------------------------------------------------------------------------------------
# The deployment as rendered with the "cluster" profile
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    done = compose("--profile", "cluster", "config", env=SECRETS)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    return config


def app_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in config["services"].items()
        if service.get("image") == "signatures-pipeline:latest"
    }


def brokers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in config["services"].items()
        if str(service.get("image", "")).startswith("apache/kafka:")
    }


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """{source: target} of a service's volumes, short ("a:b:rw") or long form."""
    out = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            out[str(volume["source"])] = str(volume["target"])
        else:
            source, target = str(volume).split(":")[:2]
            out[source] = target
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_the_cluster_profile_is_valid() -> None:
    done = compose("--profile", "cluster", "config", "-q", env=SECRETS)
    assert done.returncode == 0, done.stderr
    assert "cluster" in compose("config", "--profiles", env=SECRETS).stdout.split()


def test_every_secret_is_required() -> None:
    # the secrets this test knows are exactly the ones the file requires
    assert set(SECRETS) == REQUIRED


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_missing_secret_stops_compose_and_is_named(name: str) -> None:
    # unset here; set but empty is refused too (the tests above, and .env.example's below)
    others = {k: v for k, v in SECRETS.items() if k != name}
    done = compose("--profile", "cluster", "config", "-q", env=others)
    assert done.returncode != 0, name
    assert name in done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_no_secret_has_a_default(cluster: dict[str, Any]) -> None:
    # in the file: every secret interpolated is `${NAME:?...}`, never `${NAME:-default}`
    uses = re.findall(r"\$\{(\w+)(:?[-?+]?)", COMPOSE_TEXT)
    defaulted = {name for name, how in uses if SECRET_NAME.search(name) and how != ":?"}
    assert not defaulted, defaulted
    # rendered: a secret-named variable of any service holds a secret given, or nothing
    # (KAFKA_SASL_PASSWORD, SIGNATURES_PREVIOUS_MASTER_KEY: passed through only when set)
    seen = set()
    for service_name, service in cluster["services"].items():
        for name, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(name):
                seen.add(name)
                assert value is None or value in SECRETS.values(), (service_name, name, value)
    assert {"GF_SECURITY_ADMIN_PASSWORD", "KAFKA_SASL_PASSWORD", "POSTGRES_PASSWORD"} <= seen


@pytest.mark.integration
@pytest.mark.slow
def test_three_kafka_brokers_replicate_every_topic_three_times(cluster: dict[str, Any]) -> None:
    nodes = brokers(cluster)
    assert len(nodes) == 3, sorted(nodes)
    ids = set()
    voters = set()
    for name, node in nodes.items():
        env = {k: str(v) for k, v in node["environment"].items()}
        assert node.get("profiles") == ["cluster"], name
        assert not node.get("ports"), f"{name}: the brokers are reachable on this network only"
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092", name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false", name
        ids.add(env["KAFKA_NODE_ID"])
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
        assert "/var/lib/kafka/data" in mounts(node).values(), name
    assert len(ids) == 3, "every broker has its own node id"
    # one quorum, of all three: a controller may be lost without losing the cluster
    (quorum,) = voters
    assert set(quorum.split(",")) == {
        f"{env_id}@{name}:9093"
        for name, node in nodes.items()
        for env_id in [str(node["environment"]["KAFKA_NODE_ID"])]
    }
    logs = {source for node in nodes.values() for source in mounts(node)}
    assert len(logs) == 3, "every broker keeps its own log"


@pytest.mark.integration
@pytest.mark.slow
def test_the_services_use_every_broker_and_replication_three(cluster: dict[str, Any]) -> None:
    listeners = {
        str(node["environment"]["KAFKA_ADVERTISED_LISTENERS"]).removeprefix("PLAINTEXT://")
        for node in brokers(cluster).values()
    }
    services = app_services(cluster)
    assert {"migrate", "topics", "api", "persist", "counter", "mail-worker", "retention"} <= set(
        services
    )
    for name, service in services.items():
        env = {k: "" if v is None else str(v) for k, v in service["environment"].items()}
        assert set(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == listeners, name
        assert env["SIGNATURES_REPLICATION_FACTOR"] == "3", name
        assert env["SIGNATURES_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT", name
        # nothing waits on a broker by name: the topics job waits for whichever Kafka is set
        assert not set(service.get("depends_on") or {}) & set(brokers(cluster)), name


@pytest.mark.integration
@pytest.mark.slow
def test_the_topics_job_retries_until_kafka_takes_them(tmp_path: Path) -> None:
    config = yaml.safe_load(compose("config", env=SECRETS).stdout)
    topics = config["services"]["topics"]
    assert topics["entrypoint"] == ["sh", "-c"]
    (script,) = topics["command"]
    script = script.replace("$$", "$")  # compose's escape; the container's sh sees one `$`
    attempts = tmp_path / "attempts"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a `signatures topics` that fails until its third call, and a `sleep` that returns
    (bin_dir / "signatures").write_text(
        f'#!/bin/sh\necho x >> {attempts}\n[ "$(wc -l < {attempts})" -ge "$FAILS_UNTIL" ]\n'
    )
    (bin_dir / "sleep").write_text("#!/bin/sh\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)

    def run(fails_until: int) -> tuple[int, int]:
        attempts.write_text("")
        done = subprocess.run(
            ["sh", "-c", script],  # noqa: S607
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "FAILS_UNTIL": str(fails_until)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, len(attempts.read_text().splitlines())

    assert run(3) == (0, 3)
    assert run(1000) == (1, 60)  # bounded: the job fails, and `up` says so


def published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, published port) of each published port; "" is every interface."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                out.append((str(port.get("host_ip") or ""), str(port["published"])))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1]))
        elif len(parts) == 2:
            out.append(("", parts[0]))
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_only_the_api_is_published_beyond_this_host() -> None:
    done = compose("--profile", "cluster", "--profile", "monitoring", "config", env=SECRETS)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    ports = {name: published_ports(service) for name, service in services.items()}
    assert ports["prometheus"] == [("127.0.0.1", "9090")]
    assert ports["grafana"] == [("127.0.0.1", "3000")]
    open_to_all = {name: p for name, p in ports.items() for host, _ in p if host != "127.0.0.1"}
    assert open_to_all == {"api": [("", "8000")]}
    # every process's /metrics (9100) stays inside the network, for Prometheus only
    assert not [name for name, p in ports.items() for _, port in p if port == "9100"]


# ---------------------------------------------------------------------------------------
# .env.example
# ---------------------------------------------------------------------------------------

EXAMPLE = ROOT / ".env.example"


def example_names() -> tuple[dict[str, str | None], set[str]]:
    """The variables .env.example sets, and the ones it shows commented out."""
    values = dotenv_values(EXAMPLE)
    commented = set(re.findall(r"(?m)^# ?([A-Z][A-Z0-9_]+)=", EXAMPLE.read_text()))
    return dict(values), commented


def test_env_example_lists_every_variable_the_compose_file_reads() -> None:
    values, commented = example_names()
    assert set(values) >= REQUIRED, REQUIRED - set(values)
    unlisted = (INTERPOLATED | PASSED_THROUGH) - set(values) - commented
    assert not unlisted, unlisted
    assert not set(values) - REQUIRED - {"COMPOSE_PROFILES"}, "the rest stay commented"
    assert "cluster" in str(values["COMPOSE_PROFILES"]).split(",")


@pytest.mark.integration
@pytest.mark.slow
def test_env_example_holds_no_secret_and_is_refused_until_they_are_filled(
    tmp_path: Path,
) -> None:
    values, _ = example_names()
    assert {name: values[name] for name in REQUIRED} == dict.fromkeys(REQUIRED, "")
    as_shipped = compose("config", "-q", env_file=EXAMPLE)
    assert as_shipped.returncode != 0
    assert any(name in as_shipped.stderr for name in REQUIRED), as_shipped.stderr
    filled = tmp_path / ".env"
    text = EXAMPLE.read_text()
    for name, secret in SECRETS.items():
        text = text.replace(f"\n{name}=\n", f"\n{name}={secret}\n")
    filled.write_text(text)
    done = compose("--profile", "cluster", "config", "-q", env_file=filled)
    assert done.returncode == 0, done.stderr
