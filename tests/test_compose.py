"""The compose file parses, and refuses to start without its secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is installed by scripts/bootstrap"
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SIGNATURES_DEDUPE_SECRET", "POSTGRES_PASSWORD")
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


def test_compose_file_is_valid() -> None:
    done = compose_config(SIGNATURES_DEDUPE_SECRET="s" * 48, POSTGRES_PASSWORD="pw")
    assert done.returncode == 0, done.stderr


def test_compose_refuses_to_run_without_a_secret() -> None:
    done = compose_config(POSTGRES_PASSWORD="pw")
    assert done.returncode != 0
    assert "SIGNATURES_DEDUPE_SECRET" in done.stderr


def test_every_app_service_shares_one_configuration() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ("api:", "persist:", "counter:", "migrate:"):
        assert f"\n  {service}" in text
    assert text.count("*signatures-env") >= 4
    assert "service_healthy" in text and "pg_isready" in text
