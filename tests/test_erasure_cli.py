"""`signatures forget`, `signatures retention run` and `campaign create|update --retain-days`
as an operator runs them: real processes; counts printed, never an address."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from consumers.service import WorkerKind, run_worker
from runtime.settings import Settings
from tests.conftest import SECRET
from tests.helpers import CAMPAIGN, encode, produce, submission
from tests.processes import cli_env, signatures

pytestmark = [pytest.mark.integration]


@pytest.mark.slow
async def test_forget_and_retention_from_the_command_line(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = cli_env(settings.database_url, tmp_path, SIGNATURES_DEDUPE_SECRET=SECRET)
    created = await asyncio.to_thread(
        signatures, "campaign", "create", "--slug", CAMPAIGN.slug, "--title", "Cecenia",
        "--target", "Autorità", "--goal", "100", "--confirmation", "off", "--retain-days", "0",
        env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "retain 0 days" in created.stdout
    email = "Irina.Commandline@example.org"
    await produce(settings, encode([submission(email=email), submission()]))
    await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 90
    )

    forgot = await asyncio.to_thread(signatures, "forget", "--email", email, "--json", env=env)
    again = await asyncio.to_thread(signatures, "forget", "--email", email.upper(), env=env)
    piped = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli", "forget", "--email", "-", "--campaign", "nope"],
        env=env, input=f"{email}\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    bad = await asyncio.to_thread(signatures, "forget", "--email", "irina@@example", env=env)

    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["removed"][CAMPAIGN.slug]["signatures"] == 1
    assert json.loads(forgot.stdout)["removed"][CAMPAIGN.slug]["counted"] == 1
    assert again.returncode == 0 and "nothing stored to remove" in again.stdout
    assert piped.returncode == 1 and "no campaign nope" in piped.stderr
    assert bad.returncode == 2 and "not a valid email address" in bad.stderr
    for done in (forgot, again, piped, bad):
        for text in (done.stdout, done.stderr):
            assert "irina" not in text.casefold()
    assert await pool.fetchval("SELECT total FROM campaign_totals") == 1

    updated = await asyncio.to_thread(
        signatures, "campaign", "update", "--slug", CAMPAIGN.slug, "--retain-days", "-1", env=env
    )
    assert updated.returncode == 2 and "--retain-days" in updated.stderr
    assert (
        await asyncio.to_thread(signatures, "campaign", "close", CAMPAIGN.slug, env=env)
    ).returncode == 0
    dry = await asyncio.to_thread(signatures, "retention", "run", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"{CAMPAIGN.slug}: would anonymise 1 signature(s)" in dry.stdout
    assert await pool.fetchval("SELECT count(*) FROM signatures WHERE pii IS NOT NULL") == 1
    run = await asyncio.to_thread(signatures, "retention", "run", "--json", env=env)
    assert json.loads(run.stdout)["campaigns"] == [
        {"campaign": CAMPAIGN.slug, "signatures": 1, "tokens": 0, "emails": 0}
    ]
    assert await pool.fetchval("SELECT count(*) FROM signatures WHERE pii IS NOT NULL") == 0
    assert await pool.fetchval("SELECT total FROM campaign_totals") == 1
