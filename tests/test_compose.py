"""The compose file parses, and refuses to start without its secrets."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import consumers.metrics
import ingest.metrics

ROOT = Path(__file__).resolve().parent.parent


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is installed by scripts/bootstrap"
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "SIGNATURES_DEDUPE_SECRET",
            "POSTGRES_PASSWORD",
            "SIGNATURES_SMTP_PASSWORD",
            "SIGNATURES_MASTER_KEY",
            "SIGNATURES_API_DB_PASSWORD",
            "SIGNATURES_WORKER_DB_PASSWORD",
        )
    }
    return subprocess.run(
        [binary, "config", "-q"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SECRETS = {
    "SIGNATURES_DEDUPE_SECRET": "s" * 48,
    "POSTGRES_PASSWORD": "pw",
    "SIGNATURES_SMTP_PASSWORD": "smtp-pw",
    "SIGNATURES_MASTER_KEY": "dGVzdC1tYXN0ZXIta2V5LTAxMjM0NTY3ODlhYmNkZWY=",
    "SIGNATURES_API_DB_PASSWORD": "api-pw",
    "SIGNATURES_WORKER_DB_PASSWORD": "worker-pw",
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
