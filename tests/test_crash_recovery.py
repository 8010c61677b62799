"""Kill a real persist worker at exact moments; a restarted one leaves no loss, no double count.

The worker runs as its own process (`signatures worker persist`) and dies by SIGKILL from a
named failpoint: inside the open transaction, after the database commit but before the
accepted events and offsets, and after the events but before the offset commit. Then a
fresh worker drains the topic and the invariants are checked against PostgreSQL and the
totals topic.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg
import pytest

from consumers.service import WorkerKind, run_worker
from runtime.campaigns import counted_rows, create_campaign, read_totals
from runtime.kafka import read_to_end
from runtime.settings import Settings, settings_env
from runtime.totals_feed import read_published_totals
from schemas.events import AcceptedEvent
from tests.helpers import CAMPAIGN, encode, produce, submission

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def run_worker_process(settings: Settings, failpoint: str) -> int:
    env = {**os.environ, **settings_env(settings), "SIGNATURES_FAILPOINTS": failpoint}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "worker", "persist",
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(process.wait(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    "failpoint",
    [
        "persist.before_db_commit=kill",
        "persist.after_db_commit=kill",
        "persist.before_offset_commit=kill",
    ],
)
async def test_killed_worker_loses_nothing_and_counts_nothing_twice(
    settings: Settings, pool: asyncpg.Pool, failpoint: str
) -> None:
    await create_campaign(pool, CAMPAIGN)
    people = [submission() for _ in range(300)]
    repeats = [submission(email=p["email"].upper()) for p in people[:20]]
    await produce(settings, encode([*people, *repeats, submission(country="XX")]))

    code = await run_worker_process(settings, failpoint)
    assert code == -signal.SIGKILL
    rows_after_crash = (await counted_rows(pool))[CAMPAIGN.slug]
    if failpoint.startswith("persist.before_db_commit"):
        assert rows_after_crash == 0  # the open transaction died with the process
    else:
        assert rows_after_crash > 0  # committed, but its offsets never were

    # A fresh worker (same group) picks up from the last committed offset.
    outcome = (await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 90
    )).outcomes  # fmt: skip
    await asyncio.wait_for(run_worker(WorkerKind.COUNT, settings, asyncio.Event(), drain=True), 60)

    assert (await counted_rows(pool))[CAMPAIGN.slug] == 300
    stored = {
        str(r["submission_id"]) for r in await pool.fetch("SELECT submission_id FROM signatures")
    }
    # each person exactly once: the 280 who signed once, and one of each repeated pair
    assert {p["submission_id"] for p in people[20:]} <= stored
    for person, repeat in zip(people, repeats, strict=False):
        assert len({person["submission_id"], repeat["submission_id"]} & stored) == 1
    assert await pool.fetchval("SELECT count(*) FROM duplicate_submissions") == 20
    [totals] = await read_totals(pool, [CAMPAIGN.slug])
    assert (totals.total, await pool.fetchval("SELECT duplicates FROM campaign_totals")) == (
        300,
        20,
    )
    assert (await read_published_totals(settings))[CAMPAIGN.slug].total == 300
    # What the crash left half-done was redone: redelivered, never re-inserted.
    assert outcome.get("inserted", 0) + rows_after_crash == 300
    assert outcome.get("redelivered", 0) == rows_after_crash
    # Every stored signature has an accepted event (at least once; dedupe by id).
    events = [AcceptedEvent.model_validate_json(r.value)
              for r in await read_to_end(settings, settings.topic_accepted)]  # fmt: skip
    assert {e.signature_id for e in events} == {
        r["id"] for r in await pool.fetch("SELECT id FROM signatures")
    }
