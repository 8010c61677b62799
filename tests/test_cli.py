"""The `signatures` command as a user runs it: real processes, real services."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runtime.broker import free_port
from tests.conftest import SECRET
from tests.processes import cli_env, signatures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_campaign_commands(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path, SIGNATURES_DEDUPE_SECRET=SECRET)
    created = signatures(
        "campaign",
        "create",
        "--slug",
        "cecenia",
        "--title",
        "Cecenia",
        "--target",
        "Autorità federali russe",
        "--goal",
        "200000",
        env=env,
    )
    assert created.returncode == 0, created.stderr
    again = signatures(
        "campaign",
        "create",
        "--slug",
        "cecenia",
        "--title",
        "x",
        "--target",
        "x",
        "--goal",
        "1",
        env=env,
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = signatures(
        "campaign",
        "create",
        "--slug",
        "Bad Slug",
        "--title",
        "x",
        "--target",
        "x",
        "--goal",
        "0",
        env=env,
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == ["--slug: invalid_field", "--goal: invalid_field"]
    assert signatures("campaign", "close", "cecenia", env=env).returncode == 0
    assert signatures("campaign", "close", "nope", env=env).returncode == 1
    listed = signatures("campaign", "list", "--json", env=env)
    assert (
        '"status": "closed"' in listed.stdout
        and '"target": "Autorità federali russe"' in listed.stdout
    )


def test_up_serves_and_stops_cleanly_on_ctrl_c(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(database_url, tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.3)
        assert ready, "the API never became ready"
        # With the secret made for this machine kept in the state directory.
        assert (tmp_path / "dedupe-secret").stat().st_mode & 0o777 == 0o600
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "ready" in output
    # every process serves its /metrics on a port of its own, and says which
    listening = [json.loads(line) for line in output.splitlines() if "metrics_listening" in line]
    assert {line["worker"] for line in listening} == {
        "api", "persist", "count", "mail", "retention",
    }  # fmt: skip
    assert len({line["port"] for line in listening}) == len(listening) == 5
    assert port not in {line["port"] for line in listening}


def test_demo_ends_with_matching_totals(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path)
    done = signatures(
        "demo", "--count", "600", "--port", str(free_port()), "--seed", "7", env=env, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "totals match" in done.stdout and "yes" in done.stdout
    assert "refused (422)" in done.stdout
    assert "dead letter (partner via Kafka)" in done.stdout


def test_an_operator_command_without_its_services_says_what_is_missing(
    database_url: str, tmp_path: Path
) -> None:
    """No traceback: one line naming what to set, for a database that is not there and for a
    broker address that is not set."""
    env = cli_env(database_url.rsplit("/", 1)[0] + "/no_such_database", tmp_path)
    missing_database = signatures("status", env=env)
    assert missing_database.returncode == 1
    assert missing_database.stderr.splitlines() == [
        'cannot connect to PostgreSQL: database "no_such_database" does not exist'
        " (DATABASE_URL, or the command's own SIGNATURES_*_DATABASE_URL)"
    ]

    env = cli_env(database_url, tmp_path)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    no_broker = signatures("status", env=env)
    assert no_broker.returncode == 2
    lines = no_broker.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: KAFKA_BOOTSTRAP_SERVERS: not set")
