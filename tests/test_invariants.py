"""The checker itself: it passes a clean run and catches each kind of violation."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from consumers.service import WorkerKind, run_worker
from runtime.campaigns import create_campaign
from runtime.kafka import make_producer, read_to_end
from runtime.settings import Settings
from schemas.events import DeadLetterHeaders
from schemas.reasons import Reason
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


@dataclass
class Drained:
    """Six people (one of whom signed twice) and one invalid record, through the pipeline."""

    settings: Settings
    pool: asyncpg.Pool
    history: History
    people: list[dict[str, Any]]
    again: dict[str, Any]  # people[0] signing again: a duplicate
    bad: dict[str, Any]  # dead-lettered: no such country

    async def position(self, body: dict[str, Any]) -> tuple[int, int, bytes]:
        """The partition, offset and value of the record that carried this body."""
        value = encode([body])[0]
        for r in await read_to_end(self.settings, self.settings.topic_submitted):
            if r.value == value:
                return r.partition, r.offset, r.value
        raise AssertionError("no such record")

    async def store(self, body: dict[str, Any]) -> None:
        """A row for this body as the persist worker would keep it (no dedupe key)."""
        await self.pool.execute(
            "INSERT INTO signatures (submission_id, campaign, country, consent, source, "
            "submitted_at) VALUES ($1, $2, $3, true, $4, $5)",
            uuid.UUID(body["submission_id"]), body["campaign"], body["country"],
            body["source"], datetime.fromisoformat(body["submitted_at"]),
        )  # fmt: skip

    async def check(self, **options: Any) -> list[str]:
        return await check(self.settings, self.pool, self.history, **options)


@pytest.fixture
async def drained(settings: Settings, pool: asyncpg.Pool) -> Drained:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    people = [submission(country=c) for c in ("IT", "FR", "DE", "ES", "PT", "AT")]
    again = submission(email=people[0]["email"].upper())
    bad = submission(country="XX")
    await produce(settings, encode([*people, again, bad]))
    for body in [*people, again]:
        history.record(body, told=Told.ACKNOWLEDGED)
    history.record(bad, told=Told.ACKNOWLEDGED, valid=False)
    for kind in (WorkerKind.PERSIST, WorkerKind.COUNT):
        await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 60)
    return Drained(settings, pool, history, people, again, bad)


@pytest.mark.integration
async def test_a_clean_drain_passes(drained: Drained) -> None:
    assert await drained.check() == []


@pytest.mark.integration
async def test_a_record_lost(drained: Drained) -> None:
    victim = drained.people[1]
    partition, offset, _ = await drained.position(victim)
    await drained.pool.execute(
        "DELETE FROM signatures WHERE submission_id = $1", uuid.UUID(victim["submission_id"])
    )
    problems = await drained.check()
    assert f"acknowledged {victim['submission_id']} ({CAMPAIGN.slug}) is missing" in problems
    assert f"record {partition}/{offset} was dropped" in problems
    assert f"offset {partition}/{offset} committed but not persisted" in problems


@pytest.mark.integration
async def test_a_person_stored_twice(drained: Drained) -> None:
    await drained.store(drained.again)
    assert f"one person stored 2 times in {CAMPAIGN.slug}" in await drained.check()


@pytest.mark.integration
async def test_a_refused_submission_stored(drained: Drained) -> None:
    refused = submission()
    drained.history.record(refused, told=Told.REFUSED)
    await drained.store(refused)
    problems = await drained.check()
    assert f"refused submission {refused['submission_id']} was stored" in problems
    assert f"{refused['submission_id']} stored although refused" in problems


@pytest.mark.integration
async def test_an_invalid_submission_stored(drained: Drained) -> None:
    await drained.store({**drained.bad, "country": "IT"})
    sid = drained.bad["submission_id"]
    problems = await drained.check()
    assert f"invalid submission {sid} was stored" in problems
    assert f"dead-lettered {sid} was stored" in problems


@pytest.mark.integration
async def test_a_row_that_is_another_records(drained: Drained) -> None:
    """The row under one submission id holds what another record sent."""
    mine, other = drained.people[2], drained.people[3]
    partition, offset, _ = await drained.position(mine)
    await drained.pool.execute(
        "UPDATE signatures SET country = $2, submitted_at = $3 WHERE submission_id = $1",
        uuid.UUID(mine["submission_id"]), other["country"],
        datetime.fromisoformat(other["submitted_at"]),
    )  # fmt: skip
    problems = await drained.check()
    assert (
        f"record {partition}/{offset} is not what submission {mine['submission_id']} keeps "
        "(country, submitted_at differ)"
    ) in problems


@pytest.mark.integration
async def test_an_invalid_record_that_a_row_claims(drained: Drained) -> None:
    """A record nobody dead-lettered, invalid, under the id of a stored submission."""
    forged = {**drained.people[0], "country": "XX"}
    await produce(drained.settings, encode([forged]))
    partition, offset, _ = await drained.position(forged)
    problems = await drained.check()
    assert (
        f"record {partition}/{offset} is invalid (invalid_country) but submission "
        f"{forged['submission_id']} is kept"
    ) in problems


@pytest.mark.integration
async def test_a_dead_letter_counts_only_for_its_own_origin(drained: Drained) -> None:
    """A dead letter from another topic, at the same partition and offset as a record
    lost from the submitted topic, does not account for it."""
    victim = drained.people[4]
    partition, offset, value = await drained.position(victim)
    await drained.pool.execute(
        "DELETE FROM signatures WHERE submission_id = $1", uuid.UUID(victim["submission_id"])
    )
    await produce_letter(
        drained.settings, value, drained.settings.topic_accepted, partition, offset
    )
    problems = await drained.check()
    assert f"record {partition}/{offset} was dropped" in problems


@pytest.mark.integration
async def test_a_dead_letter_whose_origin_does_not_exist(drained: Drained) -> None:
    _, _, value = await drained.position(drained.people[5])
    topic = drained.settings.topic_submitted
    await produce_letter(drained.settings, value, topic, 0, 999)
    problems = await drained.check()
    assert any(p.endswith(f"has no record at its origin {topic}:0:999") for p in problems)


@pytest.mark.integration
async def test_a_dead_letter_that_is_not_its_origins_record(drained: Drained) -> None:
    partition, offset, _ = await drained.position(drained.people[5])
    _, _, other = await drained.position(drained.people[4])
    topic = drained.settings.topic_submitted
    await produce_letter(drained.settings, other, topic, partition, offset)
    problems = await drained.check()
    assert any(
        p.endswith(f"differs from its origin {topic}:{partition}:{offset}") for p in problems
    )


@pytest.mark.integration
async def test_an_erased_submission_stored_again(drained: Drained) -> None:
    sid = drained.people[4]["submission_id"]
    await drained.pool.execute(
        "INSERT INTO erased_submissions (submission_id, campaign, reason) "
        "VALUES ($1, $2, 'suppressed')",
        uuid.UUID(sid), CAMPAIGN.slug,
    )  # fmt: skip
    assert f"erased {sid} is stored again" in await drained.check()


@pytest.mark.integration
async def test_stored_totals_that_do_not_match_the_rows(drained: Drained) -> None:
    await drained.pool.execute("UPDATE campaign_totals SET total = total + 1, pending = 1")
    problems = await drained.check()
    assert f"{CAMPAIGN.slug}: campaign_totals 7, confirmed rows 6" in problems
    assert f"{CAMPAIGN.slug}: 1 pending counted, 0 pending rows" in problems


@pytest.mark.integration
async def test_duplicates_counted_but_not_recorded(drained: Drained) -> None:
    await drained.pool.execute("UPDATE campaign_totals SET duplicates = duplicates + 1")
    assert f"{CAMPAIGN.slug}: 2 duplicates counted, 1 recorded" in await drained.check()


@pytest.mark.integration
async def test_published_total_that_does_not_match_the_rows(drained: Drained) -> None:
    """Rows and stored totals agree, the totals topic says otherwise."""
    victim = drained.people[1]
    await drained.pool.execute(
        "DELETE FROM signatures WHERE submission_id = $1", uuid.UUID(victim["submission_id"])
    )
    await drained.pool.execute("UPDATE campaign_totals SET total = total - 1")
    assert f"{CAMPAIGN.slug}: published 6, COUNT(*) 5" in await drained.check()


@pytest.mark.integration
async def test_a_row_stored_without_an_accepted_event(drained: Drained) -> None:
    await drained.store(stray := submission())
    row = await drained.pool.fetchval(
        "SELECT id FROM signatures WHERE submission_id = $1", uuid.UUID(stray["submission_id"])
    )
    assert f"signature {row} stored without an accepted event" in await drained.check()


@pytest.mark.integration
async def test_lag_of_unconsumed_records(drained: Drained) -> None:
    late = submission()
    await produce(drained.settings, encode([late]))
    partition, offset, _ = await drained.position(late)
    problems = await drained.check()
    assert f"group {drained.settings.persist_group} has lag 1" in problems
    assert f"record {partition}/{offset} was dropped" in problems


@pytest.mark.integration
async def test_personal_data_leaked(drained: Drained) -> None:
    email = drained.people[3]["email"]
    problems = await drained.check(extra_texts=[("api.log", f"signed: {email}")])
    assert "PII leaked into api.log" in problems


async def produce_letter(
    settings: Settings, value: bytes, topic: str, partition: int, offset: int
) -> None:
    """A dead letter claiming to come from `topic` at `partition` and `offset`."""
    headers = DeadLetterHeaders(
        reason=Reason.INVALID_COUNTRY, detail="country: invalid_country", origin_topic=topic,
        origin_partition=partition, origin_offset=offset, rejected_at=datetime.now(UTC),
    )  # fmt: skip
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic_rejected, value=value, headers=headers.to_kafka()
        )
    finally:
        await producer.stop()
