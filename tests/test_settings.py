"""Configuration is validated at start with one clear line per bad variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.settings import ConfigError, load_settings


def test_each_problem_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    monkeypatch.setenv("SIGNATURES_PARTITIONS", "many")
    monkeypatch.setenv("SIGNATURES_DEDUPE_SECRET", "short")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "DATABASE_URL",
        "SIGNATURES_DEDUPE_SECRET",
        "SIGNATURES_PARTITIONS",
    ]
    assert "short" not in str(caught.value)  # a secret is never echoed


def test_missing_secret_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGNATURES_DEDUPE_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"^SIGNATURES_DEDUPE_SECRET: not set"):
        load_settings().require_dedupe_secret()


def test_local_secret_is_stable(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGNATURES_DEDUPE_SECRET", raising=False)
    monkeypatch.setenv("SIGNATURES_STATE_DIR", str(tmp_path))
    first = load_settings().with_local_secret().require_dedupe_secret()
    second = load_settings().with_local_secret().require_dedupe_secret()
    assert first == second and len(first) >= 32


@pytest.mark.slow
def test_cli_reports_bad_config_in_one_line_and_exit_2() -> None:
    env = {**os.environ, "SIGNATURES_BATCH_MAX_RECORDS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: SIGNATURES_BATCH_MAX_RECORDS: "
        "Input should be greater than or equal to 1"
    ]
