"""Forgetting a person: `erase` (signatures forget, "this wasn't me"), and the persist
workers keeping every replay, redelivery and dead-letter replay from bringing them back."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cli.erasure import forget_person
from consumers.service import WorkerKind, run_worker
from ops.dlq import read_dead_letters, replay
from runtime.campaigns import create_campaign
from runtime.confirmation import Action, Outcome, new_token, use_token
from runtime.erasure import Erasure, person_hash, receipt_time, suppressed
from runtime.kafka import read_to_end
from runtime.settings import Settings
from tests.conftest import SECRET
from tests.helpers import CAMPAIGN, REQUIRED_CAMPAIGN, encode, produce, submission, wait_until
from tests.invariants import History, Told, check

REQ = REQUIRED_CAMPAIGN.slug
KEY = SECRET.encode()
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# --- pure logic ---------------------------------------------------------------------------


def test_the_hash_is_the_persist_workers_dedupe_key_of_the_normalised_address() -> None:
    assert person_hash(KEY, " Giulia.Rossi@Example.ORG ") == person_hash(
        KEY, "giulia.rossi@example.org"
    )
    assert person_hash(KEY, "giulia.rossi@example.org") != person_hash(KEY, "g.rossi@example.org")
    with pytest.raises(ValueError, match="valid email") as caught:
        person_hash(KEY, "not-an-address")
    assert "not-an-address" not in str(caught.value)


def test_receipt_time_is_the_apis_stamp_or_the_producers_time_less_the_skew() -> None:
    assert receipt_time(T0, T0 + timedelta(hours=1)) == T0
    assert receipt_time(None, T0) == T0 - timedelta(minutes=5)


def test_suppressed_only_for_that_person_scope_and_earlier_receipt() -> None:
    person, other = b"p" * 32, b"o" * 32
    everywhere: dict[bytes, dict[str | None, datetime]] = {person: {None: T0}}
    one_campaign: dict[bytes, dict[str | None, datetime]] = {person: {"a": T0}}
    assert suppressed(person, "a", T0, everywhere)  # at the erasure: before it
    assert suppressed(person, "b", T0 - timedelta(days=3), everywhere)
    assert not suppressed(person, "a", T0 + timedelta(microseconds=1), everywhere)
    assert not suppressed(other, "a", T0 - timedelta(days=1), everywhere)
    assert suppressed(person, "a", T0 - timedelta(seconds=1), one_campaign)
    assert not suppressed(person, "b", T0 - timedelta(seconds=1), one_campaign)
    assert not suppressed(person, "a", T0, {})


# --- against PostgreSQL and the broker ----------------------------------------------------


async def drain(settings: Settings, kind: WorkerKind = WorkerKind.PERSIST) -> dict[str, int]:
    stats = await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 90)
    return stats.outcomes


def received_now(**fields: Any) -> dict[str, Any]:
    """A submission as the API produces it: with its receipt time stamped."""
    now = datetime.now(UTC).isoformat()
    return submission(received_at=now, **fields)


async def totals(pool: asyncpg.Pool, campaign: str) -> tuple[int, int, int, int]:
    row = await pool.fetchrow(
        "SELECT total, pending, duplicates, version FROM campaign_totals WHERE campaign = $1",
        campaign,
    )
    assert row is not None
    return row["total"], row["pending"], row["duplicates"], row["version"]


async def breakdown(pool: asyncpg.Pool, campaign: str) -> dict[tuple[str, str], int]:
    rows = await pool.fetch(
        "SELECT dimension, key, count FROM campaign_breakdown WHERE campaign = $1", campaign
    )
    return {(r["dimension"], r["key"]): r["count"] for r in rows}


async def rows_of(pool: asyncpg.Pool, email: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM signatures WHERE email_hash = $1", person_hash(KEY, email)
        )
    )


async def forget(
    settings: Settings, pool: asyncpg.Pool, email: str, campaign: str | None = None
) -> Erasure:
    return await forget_person(settings, pool, KEY, email, campaign)


@pytest.mark.integration
async def test_forget_survives_a_full_replay_by_a_new_group(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    history = History()
    email = "Maria.Ivanova.forget@example.org"
    mine = [
        received_now(email=email, country="RU"),  # counted at once
        received_now(email=email.lower(), country="RU"),  # the same person again: duplicate
        received_now(email=email, campaign=REQ, country="RU"),  # pending
    ]
    others = [received_now(country="IT") for _ in range(5)]
    others += [received_now(campaign=REQ) for _ in range(2)]
    await produce(settings, encode([*mine, *others]))
    for body in (*mine, *others):
        history.record(body, told=Told.ACKNOWLEDGED)
    first = await drain(settings)
    await drain(settings, WorkerKind.COUNT)
    assert (first["inserted"], first["duplicates"]) == (9, 1)
    open_before, req_before = await totals(pool, CAMPAIGN.slug), await totals(pool, REQ)
    assert open_before[:3] == (6, 0, 1) and req_before[:3] == (0, 3, 0)
    assert (await breakdown(pool, CAMPAIGN.slug))[("country", "RU")] == 1

    erased = await forget(settings, pool, email)

    assert {c: (e.signatures, e.counted, e.pending) for c, e in erased.by_campaign.items()} == {
        CAMPAIGN.slug: (1, 1, 0),
        REQ: (1, 0, 1),
    }
    assert await rows_of(pool, email) == 0
    open_after, req_after = await totals(pool, CAMPAIGN.slug), await totals(pool, REQ)
    # the counted total moved down with a new version; the pending count moved, privately
    assert open_after == (5, 0, 1, open_before[3] + 1)
    assert req_after == (0, 2, 0, req_before[3])
    assert (await breakdown(pool, CAMPAIGN.slug)).get(("country", "RU")) == 0
    assert (await breakdown(pool, CAMPAIGN.slug))[("source", "web")] == 5

    # every record from the start, by a group that has never read the topic
    replayer = settings.model_copy(update={"persist_group": f"{settings.persist_group}-replay"})
    replayed = await drain(replayer)
    assert replayed.get("erased") == 3  # both of hers and her repeat: none stored again
    assert replayed.get("inserted", 0) == 0
    assert await rows_of(pool, email) == 0
    assert await totals(pool, CAMPAIGN.slug) == open_after
    assert await totals(pool, REQ) == req_after
    # not dead-lettered either: nothing of hers is copied anywhere
    assert await read_to_end(settings, settings.topic_rejected, timeout=5) == []

    await drain(settings, WorkerKind.COUNT)
    assert await check(settings, pool, history) == []

    # and the checker would see a resurrection: an erased submission stored again
    back = others[0]["submission_id"]
    await pool.execute(
        "INSERT INTO erased_submissions (submission_id, campaign, reason) "
        "VALUES ($1::uuid, $2, 'suppressed')",
        back,
        CAMPAIGN.slug,
    )
    assert f"erased {back} is stored again" in await check(settings, pool, history)


@pytest.mark.integration
async def test_forget_twice_changes_nothing_more_and_a_new_signature_counts(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    email = "olga.forget.twice@example.org"
    before = received_now(email=email)
    await produce(settings, encode([before, received_now()]))
    await drain(settings)

    first = await forget(settings, pool, email, CAMPAIGN.slug)
    after_first = await totals(pool, CAMPAIGN.slug)
    second = await forget(settings, pool, email, CAMPAIGN.slug)

    assert first.signatures == 1 and second.signatures == 0
    assert second.by_campaign == {}
    assert await totals(pool, CAMPAIGN.slug) == after_first  # no version bumped again
    assert await pool.fetchval("SELECT count(*) FROM erasures") == 1

    # she signs again after being forgotten: a new signature, stored and counted; a
    # redelivery of the old one still is not
    fresh = received_now(email=email)
    await produce(settings, encode([fresh, before]))
    outcome = await drain(settings)
    assert (outcome.get("inserted"), outcome.get("erased")) == (1, 1)
    assert await rows_of(pool, email) == 1
    total, _, _, version = await totals(pool, CAMPAIGN.slug)
    assert (total, version) == (after_first[0] + 1, after_first[3] + 1)


@pytest.mark.integration
async def test_forget_a_pending_signature_deletes_its_links_and_queued_emails(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    email = "pending.forget@example.org"
    mine = received_now(email=email, campaign=REQ)
    await produce(settings, encode([mine]))
    await drain(settings)
    sid = uuid.UUID(mine["submission_id"])
    async with pool.acquire() as conn:
        await new_token(conn, sid, REQ, now=datetime.now(UTC), ttl=timedelta(days=1))
        await conn.execute(
            "INSERT INTO mail_outbox (prompted_by, kind, submission_id, campaign) "
            "VALUES ($1, 'confirm', $1, $2)",
            sid,
            REQ,
        )
    before = await totals(pool, REQ)

    erased = await forget(settings, pool, email)

    assert erased.by_campaign[REQ].pending == 1
    assert (erased.by_campaign[REQ].tokens, erased.by_campaign[REQ].emails) == (1, 1)
    assert await totals(pool, REQ) == (0, 0, 0, before[3])  # nothing public moved
    assert await pool.fetchval("SELECT count(*) FROM confirmation_tokens") == 0
    assert await pool.fetchval("SELECT count(*) FROM mail_outbox") == 0
    assert await pool.fetchval("SELECT reason FROM erased_submissions") == "erased"


@pytest.mark.integration
async def test_this_wasnt_me_erases_for_that_campaign_only(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    email = "not.me@example.org"
    forged = received_now(email=email, campaign=REQ)
    own = received_now(email=email)  # the owner's own signature elsewhere stays
    await produce(settings, encode([forged, own]))
    await drain(settings)
    async with pool.acquire() as conn:
        token = await new_token(
            conn, uuid.UUID(forged["submission_id"]), REQ, now=datetime.now(UTC),
            ttl=timedelta(days=1),
        )  # fmt: skip

    outcome, campaign = await use_token(pool, token, Action.REMOVE)

    assert (outcome, campaign) == (Outcome.REMOVED, REQ)
    assert await pool.fetchval(
        "SELECT count(*) FROM signatures WHERE submission_id = $1::uuid", forged["submission_id"]
    ) == 0  # fmt: skip
    scope = await pool.fetch("SELECT campaign FROM erasures")
    assert [r["campaign"] for r in scope] == [REQ]
    assert await rows_of(pool, email) == 1  # the other campaign's signature is hers
    assert (await totals(pool, REQ))[:2] == (0, 0)
    assert (await use_token(pool, token, Action.CONFIRM))[0] is Outcome.UNKNOWN

    # a redelivery of the forged one stays out; the owner signing for herself gets in
    await produce(settings, encode([forged, received_now(email=email, campaign=REQ)]))
    again = await drain(settings)
    assert (again.get("erased"), again.get("inserted")) == (1, 1)
    assert (await totals(pool, REQ))[:2] == (0, 1)


@pytest.mark.integration
async def test_a_dead_letter_replayed_after_the_erasure_is_not_stored(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    email = "dead.letter.forget@example.org"
    early = received_now(email=email)  # before its campaign exists: a dead letter
    await produce(settings, encode([early]))
    assert (await drain(settings)).get("dead_lettered") == 1
    await create_campaign(pool, CAMPAIGN)
    await forget(settings, pool, email)

    replayed = await replay(settings, pool, await read_dead_letters(settings))
    assert replayed.replayed == 1
    outcome = await drain(settings)

    assert outcome.get("erased") == 1
    assert outcome.get("dead_lettered", 0) == 0  # not copied to the dead letters again
    assert await rows_of(pool, email) == 0
    assert len(await read_dead_letters(settings)) == 1
    assert await pool.fetchval("SELECT reason FROM erased_submissions") == "suppressed"


@pytest.mark.integration
async def test_a_running_worker_sees_an_erasure_made_while_it_runs(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    email = "while.running@example.org"
    mine = received_now(email=email)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(WorkerKind.PERSIST, settings, stop))
    try:
        await produce(settings, encode([mine]))
        await wait_until(lambda: stored(pool, mine), timeout=60, interval=0.2)

        await forget(settings, pool, email)
        marker = received_now()
        await produce(settings, encode([mine, marker]))  # redelivered, then someone else
        await wait_until(lambda: stored(pool, marker), timeout=60, interval=0.2)
    finally:
        stop.set()
        stats = await asyncio.wait_for(worker, 60)

    assert stats.outcomes.get("erased") == 1
    assert await rows_of(pool, email) == 0


async def stored(pool: asyncpg.Pool, body: dict[str, Any]) -> bool:
    found = await pool.fetchval(
        "SELECT count(*) FROM signatures WHERE submission_id = $1::uuid", body["submission_id"]
    )
    return bool(found)
