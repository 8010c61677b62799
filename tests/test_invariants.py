"""The checker itself: it passes a clean run and catches each kind of violation."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import pytest

from consumers.service import WorkerKind, run_worker
from runtime.campaigns import create_campaign
from runtime.settings import Settings
from tests.helpers import CAMPAIGN, encode, produce, submission
from tests.invariants import History, Told, check, leaks, totals_problems


def totals(version: int, total: int, campaign: str = "c") -> bytes:
    return json.dumps({
        "campaign": campaign, "total": total, "version": version, "goal": 10, "status": "open",
        "by_country": {}, "updated_at": datetime.now(UTC).isoformat(),
    }).encode()  # fmt: skip


def test_totals_in_order_and_exact_pass() -> None:
    assert totals_problems([totals(1, 1), totals(2, 3), totals(2, 3), totals(3, 4)], {"c": 4}) == []


def test_totals_published_late_out_of_order_are_harmless() -> None:
    assert totals_problems([totals(1, 1), totals(3, 4), totals(2, 3)], {"c": 4}) == []


@pytest.mark.parametrize(
    ("records", "counts", "problem"),
    [
        ([totals(1, 1), totals(2, 3)], {"c": 4}, "published 3, COUNT(*) 4"),
        ([totals(1, 5), totals(2, 3)], {"c": 3}, "went back from 5 to 3"),
        ([totals(1, 1), totals(1, 2)], {"c": 1}, "v1 published as 1 and 2"),
        ([], {"c": 2}, "nothing published for 2 rows"),
    ],
)
def test_totals_violations_are_named(
    records: list[bytes], counts: dict[str, int], problem: str
) -> None:
    assert any(problem in p for p in totals_problems(records, counts))


def test_leaks_are_found_case_insensitively() -> None:
    found = leaks(["Giulia.Rossi@example.org"], [("api.log", "x giulia.rossi@EXAMPLE.org y")])
    assert found == ["PII leaked into api.log"]
    assert leaks(["Giulia.Rossi@example.org"], [("api.log", "email_hash=ab12")]) == []


@pytest.mark.integration
async def test_check_passes_a_clean_drain_and_catches_a_row_removed(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    people = [submission() for _ in range(40)]
    again = submission(email=people[0]["email"].upper())
    bad = submission(country="XX")
    await produce(settings, encode([*people, again, bad]))
    for body in people:
        history.record(body, told=Told.ACKNOWLEDGED)
    history.record(again, told=Told.ACKNOWLEDGED)
    history.record(bad, told=Told.ACKNOWLEDGED, valid=False)
    for kind in (WorkerKind.PERSIST, WorkerKind.COUNT):
        await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 60)

    assert await check(settings, pool, history) == []

    victim = people[7]["submission_id"]
    await pool.execute("DELETE FROM signatures WHERE submission_id = $1", victim)
    problems = await check(settings, pool, history)
    assert f"acknowledged {victim} ({CAMPAIGN.slug}) is missing" in problems
    assert any("campaign_totals 40, confirmed rows 39" in p for p in problems)
    assert any("published 40, COUNT(*) 39" in p for p in problems)
    assert any("dropped" in p for p in problems)
    assert any("committed but not persisted" in p for p in problems)
    assert leaks(history.sentinels, [("leak", f"… {people[3]['email']} …")])

    # a row that never went through the pipeline, and a duplicate counted from nowhere
    await pool.execute(
        "INSERT INTO signatures (submission_id, campaign, email_hash, first_name, last_name, "
        "email, country, consent, source, submitted_at) SELECT gen_random_uuid(), campaign, "
        "'\\x00', 'X', 'Y', 'x@example.org', 'IT', false, 'web', now() FROM campaign_totals"
    )
    await pool.execute("UPDATE campaign_totals SET duplicates = duplicates + 1")
    problems = await check(settings, pool, history)
    assert any("stored without an accepted event" in p for p in problems)
    assert any("2 duplicates counted, 1 recorded" in p for p in problems)

    # a signature waiting for its owner, counted as if confirmed
    waiting = people[8]["submission_id"]
    await pool.execute("UPDATE signatures SET state = 'pending' WHERE submission_id = $1", waiting)
    problems = await check(settings, pool, history)
    assert any("0 pending counted, 1 pending rows" in p for p in problems)
    assert any("campaign_totals 40, confirmed rows 39" in p for p in problems)
