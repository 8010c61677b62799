"""The on-call tools against the real services: status, reconcile, dead-letter replay."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from typer.testing import CliRunner

from cli.main import app
from consumers.service import WorkerKind, run_worker
from ops.dlq import read_dead_letters, replay, select
from ops.reconcile import Correction, reconcile
from ops.status import collect
from runtime.campaigns import counted_rows, create_campaign
from runtime.db import create_pool
from runtime.settings import Settings, settings_env
from runtime.totals_feed import read_published_totals
from schemas.campaign import Confirmation, NewCampaign
from tests.helpers import CAMPAIGN, encode, produce, submission

pytestmark = pytest.mark.integration

LATER = NewCampaign(
    confirmation=Confirmation.OFF, slug="later", title="Later", target="Someone", goal=10
)


async def drain(settings: Settings) -> None:
    for kind in (WorkerKind.PERSIST, WorkerKind.COUNT):
        await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 90)


async def test_status_shows_lag_then_drift_and_reconcile_fixes_it(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    people = [submission() for _ in range(30)]
    await produce(settings, encode([*people, submission(country="XX"), submission(email="x")]))

    before = await collect(settings, pool, sample_s=0)
    assert before.lag[settings.persist_group] == 32  # nothing consumed yet
    await drain(settings)

    after = await collect(settings, pool, sample_s=0)
    assert after.lag == {settings.persist_group: 0, settings.count_group: 0}
    assert after.dead_letters == {"invalid_country": 1, "invalid_email": 1}
    [line] = after.campaigns
    assert (line.rows, line.total, line.published_total, line.drift) == (30, 30, 30, 0)
    assert after.healthy

    # a row removed behind the pipeline's back
    await pool.execute(
        "DELETE FROM signatures WHERE submission_id = $1", people[0]["submission_id"]
    )
    [line] = (await collect(settings, pool, sample_s=0)).campaigns
    assert (line.rows, line.total, line.drift) == (29, 30, 1)

    [correction] = await reconcile(settings, pool)
    assert correction.total == (30, 29)
    assert correction.breakdown == {"country:IT": (30, 29), "source:web": (30, 29)}
    assert correction.version == line.version + 1
    fixed = await collect(settings, pool, sample_s=0)
    [line] = fixed.campaigns
    assert (line.rows, line.total, line.published_total, line.drift) == (29, 29, 29, 0)
    assert line.published_version == correction.version
    assert fixed.healthy
    # nothing left to correct: a second run changes nothing and publishes nothing new
    assert [c.changed for c in await reconcile(settings, pool)] == [False]


RACE_PEOPLE = 3_000
RACE_REPEATS = 300  # signing again: duplicates counted while reconcile runs
RACE_BATCH = 40  # about 80 transactions for reconcile to land between
COUNTRIES = ("IT", "FR", "DE", "ES")
SOURCES = ("web", "partner:ngo", "import:paper")


async def test_reconcile_never_loses_what_workers_add_meanwhile(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    settings = settings.model_copy(update={"batch_max_records": RACE_BATCH})
    await create_campaign(pool, CAMPAIGN)
    people = [
        submission(country=COUNTRIES[i % len(COUNTRIES)], source=SOURCES[i % len(SOURCES)])
        for i in range(RACE_PEOPLE)
    ]
    again = [  # the same person from the same place: either one may be stored first
        submission(email=p["email"].upper(), country=p["country"], source=p["source"])
        for p in people[:RACE_REPEATS]
    ]
    await produce(settings, encode([*people, *again]))
    await pool.execute("UPDATE campaign_totals SET total = total + 7")  # drift to be fixed

    # Reconcile again and again while the persist worker commits batch after batch.
    persist = asyncio.create_task(
        asyncio.wait_for(run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 90)
    )
    corrections: list[Correction] = []
    while not persist.done():
        corrections.extend(await reconcile(settings, pool))
    await persist

    # They did overlap: several reconciles counted a table the worker was still filling.
    seen = [c.total[1] for c in corrections]  # the rows each one counted, under its locks
    assert len([n for n in seen if 0 < n < RACE_PEOPLE]) >= 3, seen
    # Only the planted drift was ever corrected: no reconcile found a total the worker
    # had left wrong, nor left one wrong for the next reconcile to repair.
    changed = [c for c in corrections if c.changed]
    assert len(changed) == 1, changed
    [fixed] = changed
    assert (fixed.total[0] - fixed.total[1], fixed.breakdown) == (7, {}), fixed
    assert fixed.duplicates[0] == fixed.duplicates[1] and fixed.pending == (0, 0), fixed
    # The totals the worker and reconcile left behind are the rows', breakdowns included.
    by_country = {c: sum(p["country"] == c for p in people) for c in COUNTRIES}
    expected = {
        **{f"country:{c}": n for c, n in by_country.items()},
        **{f"source:{s}": sum(p["source"] == s for p in people) for s in SOURCES},
    }
    assert (await counted_rows(pool))[CAMPAIGN.slug] == RACE_PEOPLE
    kept = await pool.fetchrow("SELECT total, duplicates, pending FROM campaign_totals")
    assert kept is not None
    assert tuple(kept) == (RACE_PEOPLE, RACE_REPEATS, 0)
    breakdown = await pool.fetch("SELECT dimension, key, count FROM campaign_breakdown")
    assert {f"{r['dimension']}:{r['key']}": r["count"] for r in breakdown} == expected
    await asyncio.wait_for(run_worker(WorkerKind.COUNT, settings, asyncio.Event(), drain=True), 90)
    published = (await read_published_totals(settings))[CAMPAIGN.slug]
    assert published.total == RACE_PEOPLE
    assert published.by_country == by_country
    # And reconcile itself agrees: nothing left to correct.
    [last] = await reconcile(settings, pool)
    assert not last.changed, last


async def test_a_dead_letter_fixed_and_replayed_is_counted_exactly_once(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    early = [submission(campaign=LATER.slug) for _ in range(3)]
    await produce(settings, encode([*early, submission(), submission(country="XX")]))
    await drain(settings)
    letters = select(await read_dead_letters(settings), reasons=["unknown_campaign"])
    assert len(letters) == 3
    assert all(d.redacted()["payload"]["email"].startswith("<redacted") for d in letters)

    await create_campaign(pool, LATER)  # the rule that refused them is "fixed"
    first = await replay(settings, pool, letters)
    assert (first.replayed, first.already_replayed) == (3, 0)
    repeated = await replay(settings, pool, letters)  # safe to repeat: nothing sent
    assert (repeated.replayed, repeated.already_replayed) == (0, 3)
    forced = await replay(settings, pool, letters, again=True)  # sent again: still once
    assert forced.replayed == 3
    await drain(settings)

    assert (await counted_rows(pool))[LATER.slug] == 3
    stored = {
        str(r["submission_id"]) for r in await pool.fetch("SELECT submission_id FROM signatures")
    }
    assert {e["submission_id"] for e in early} <= stored
    assert (await read_published_totals(settings))[LATER.slug].total == 3
    assert len(select(await read_dead_letters(settings), reasons=["unknown_campaign"])) == 3


@pytest.mark.slow
def test_cli_status_dlq_and_reconcile(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    async def prepare() -> None:
        pool = await create_pool(settings.database_url, max_size=1)
        try:
            await create_campaign(pool, CAMPAIGN)
        finally:
            await pool.close()
        secret = submission(first_name="Sentinella", email="sentinella.x@example.org")
        await produce(settings, encode([submission(), {**secret, "country": "XX"}]))
        await drain(settings)

    asyncio.run(prepare())
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.output)
    assert shown["lag"] == {settings.persist_group: 0, settings.count_group: 0}
    assert shown["campaigns"][0]["rows"] == 1

    listed = runner.invoke(app, ["dlq", "list", "--json"])
    [letter] = json.loads(listed.output)
    assert letter["reason"] == "invalid_country"
    shown_letter = runner.invoke(app, ["dlq", "show", letter["ref"]])
    for output in (listed.output, shown_letter.output):
        assert "sentinella" not in output.casefold()
    assert '"country": "XX"' in shown_letter.output
    revealed = runner.invoke(app, ["dlq", "show", letter["ref"], "--reveal"])
    assert "Sentinella" in revealed.output

    assert runner.invoke(app, ["dlq", "replay"]).exit_code == 2  # nothing chosen
    dry = runner.invoke(app, ["reconcile", "--dry-run", "--json"])
    assert dry.exit_code == 0
    assert json.loads(dry.output)[0]["changed"] is False
