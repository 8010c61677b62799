"""Pending, confirmed, removed: the persist worker and the one state-change path."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from consumers.service import WorkerKind, run_worker
from ops.reconcile import reconcile_campaign
from runtime.campaigns import counted_rows, create_campaign, public_by_country
from runtime.kafka import read_to_end
from runtime.settings import Settings
from runtime.signature_states import change_state
from schemas.campaign import SignatureState
from tests.helpers import CAMPAIGN, REQUIRED_CAMPAIGN, decrypted, encode, produce, submission

REQ = REQUIRED_CAMPAIGN.slug


def test_small_countries_are_merged_into_other() -> None:
    counts = {"IT": 120, "RU": 10, "VA": 1, "LI": 3, "SM": 0}
    assert public_by_country(counts, 10) == {"IT": 120, "RU": 10, "other": 4}
    assert public_by_country({"IT": 12}, 10) == {"IT": 12}
    assert public_by_country({"LI": 1}, 10) == {"other": 1}
    assert public_by_country({}, 10) == {}


async def drain(settings: Settings) -> dict[str, int]:
    stats = await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 60
    )
    return stats.outcomes


async def totals_row(pool: asyncpg.Pool, campaign: str) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT total, pending, duplicates, version, updated_at FROM campaign_totals "
        "WHERE campaign = $1",
        campaign,
    )
    assert row is not None
    return dict(row)


async def state_of(pool: asyncpg.Pool, submission_id: str) -> str:
    return str(
        await pool.fetchval(
            "SELECT state FROM signatures WHERE submission_id = $1::uuid", submission_id
        )
    )


@pytest.mark.integration
async def test_required_campaign_stores_pending_and_counts_nothing_in_public(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    created = await totals_row(pool, REQ)
    people = [submission(campaign=REQ, country="RU") for _ in range(3)]
    again = submission(campaign=REQ, email=people[0]["email"].upper())
    await produce(settings, encode([*people, again]))

    outcome = await drain(settings)

    assert (outcome["inserted"], outcome["duplicates"], outcome["resends"]) == (3, 1, 1)
    assert {await state_of(pool, p["submission_id"]) for p in people} == {"pending"}
    after = await totals_row(pool, REQ)
    assert (after["total"], after["pending"], after["duplicates"]) == (0, 3, 1)
    # nothing public moved: not the version, not the time of the last update
    assert (after["version"], after["updated_at"]) == (created["version"], created["updated_at"])
    assert await pool.fetchval("SELECT count(*) FROM campaign_breakdown WHERE count > 0") == 0
    # the repeat asks for the link again, for the signature already stored
    resend = await pool.fetchrow("SELECT * FROM mail_outbox")
    assert resend is not None
    assert (str(resend["prompted_by"]), resend["kind"], str(resend["submission_id"])) == (
        again["submission_id"],
        "resend",
        people[0]["submission_id"],
    )
    events = [
        json.loads(r.value)
        for r in await read_to_end(settings, settings.topic_accepted)
        if r.value is not None
    ]
    assert sorted(e["state"] for e in events) == ["pending"] * 3


@pytest.mark.integration
async def test_confirm_counts_once_and_remove_forgets_the_person(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    first, second = submission(campaign=REQ, country="IT"), submission(campaign=REQ)
    await produce(settings, encode([first, second]))
    await drain(settings)
    before = await totals_row(pool, REQ)
    first_id, second_id = uuid.UUID(first["submission_id"]), uuid.UUID(second["submission_id"])

    async with pool.acquire() as conn, conn.transaction():
        confirmed = await change_state(
            conn, [first_id], SignatureState.CONFIRMED, allowed_from={SignatureState.PENDING}
        )
    assert confirmed.changed == [first_id]
    after = await totals_row(pool, REQ)
    assert (after["total"], after["pending"], after["version"]) == (1, 1, before["version"] + 1)
    assert after["updated_at"] > before["updated_at"]
    breakdown = await pool.fetch(
        "SELECT dimension, key, count FROM campaign_breakdown WHERE campaign = $1", REQ
    )
    assert {(r["dimension"], r["key"]): r["count"] for r in breakdown} == {
        ("country", "IT"): 1,
        ("source", "web"): 1,
    }
    assert (await counted_rows(pool))[REQ] == 1

    async with pool.acquire() as conn, conn.transaction():  # the same change again: nothing
        repeated = await change_state(
            conn, [first_id], SignatureState.CONFIRMED, allowed_from={SignatureState.PENDING}
        )
    assert repeated.changed == []
    assert await totals_row(pool, REQ) == after

    async with pool.acquire() as conn, conn.transaction():
        removed = await change_state(
            conn,
            [second_id],
            SignatureState.REMOVED,
            allowed_from={SignatureState.PENDING},
            clear_personal_data=True,
        )
    assert removed.changed == [second_id]
    [row] = await decrypted(pool, "s.submission_id = $1", second_id)
    assert (row["state"], row["first_name"], row["last_name"], row["email"]) == (
        "removed",
        None,
        None,
        None,
    )
    assert row["pii"] is None and row["key_id"] is None
    assert row["email_hash"] is None and row["postcode"] is None
    gone = await totals_row(pool, REQ)
    assert (gone["total"], gone["pending"], gone["version"]) == (1, 0, after["version"])

    # Redelivered, the removed submission stays removed; the person signing anew is stored.
    fresh = submission(campaign=REQ, email=second["email"])
    await produce(settings, encode([second, fresh]))
    outcome = await drain(settings)
    assert (outcome["inserted"], outcome["redelivered"], outcome.get("dead_lettered", 0)) == (
        1,
        1,
        0,
    )
    assert await state_of(pool, second["submission_id"]) == "removed"
    assert await state_of(pool, fresh["submission_id"]) == "pending"

    # the stored figures agree with the rows: reconcile finds nothing to correct
    async with pool.acquire() as conn:
        correction = await reconcile_campaign(conn, REQ)
    assert not correction.changed, correction


@pytest.mark.integration
async def test_a_duplicate_moves_no_public_number(settings: Settings, pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    person = submission()
    await produce(settings, encode([person]))
    await drain(settings)
    signed = await totals_row(pool, CAMPAIGN.slug)
    assert signed["total"] == 1

    await produce(settings, encode([submission(email=person["email"].upper())]))
    outcome = await drain(settings)

    assert outcome["duplicates"] == 1
    after = await totals_row(pool, CAMPAIGN.slug)
    assert after["duplicates"] == signed["duplicates"] + 1
    assert (after["total"], after["version"], after["updated_at"]) == (
        signed["total"],
        signed["version"],
        signed["updated_at"],
    )
