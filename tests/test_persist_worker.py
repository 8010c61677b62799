"""The persist worker against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import structlog

from consumers.persist import _accepted
from consumers.service import WorkerKind, run_worker
from consumers.store import StoredSignature
from runtime.campaigns import close_campaign, counted_rows, create_campaign, read_totals
from runtime.kafka import read_to_end
from runtime.settings import Settings
from schemas.campaign import Confirmation, NewCampaign
from schemas.events import AcceptedEvent, DeadLetterHeaders
from tests.helpers import CAMPAIGN, decrypted, encode, produce, submission

pytestmark = pytest.mark.integration


async def drain(settings: Settings, kind: WorkerKind = WorkerKind.PERSIST) -> dict[str, int]:
    stats = await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 60)
    return stats.outcomes


async def test_valid_duplicate_and_invalid_records(settings: Settings, pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(
        pool,
        NewCampaign(confirmation=Confirmation.OFF, slug="closed", title="t", target="t", goal=10),
    )
    await close_campaign(pool, "closed")
    first = submission(email="Mario.Rossi@Example.ORG", country="it", first_name=" Mario ")
    same_person = submission(email="  mario.rossi@example.org ")
    nfd = unicodedata.normalize("NFD", "josé@example.org")
    unicode_first = submission(email="JOSÉ@example.org", country="ES")
    unicode_again = submission(email=nfd, country="ES")
    others = [submission(country="FR", source="partner:acme") for _ in range(5)]
    bad = [
        submission(email="not-an-email"),
        submission(first_name="Nul\x00l"),
        submission(consent="yes"),
        submission(campaign="nope"),
        submission(campaign="closed"),
        submission(country="XX"),
    ]
    values = encode([first, same_person, unicode_first, unicode_again, *others, *bad])
    values += [b"{not json", b"\xff\xfe\x00", None, b"[]"]
    await produce(settings, values)

    outcome = await drain(settings)

    assert outcome["inserted"] == 7
    assert outcome["duplicates"] == 2
    assert outcome["dead_lettered"] == 10
    [row] = await decrypted(pool, "s.submission_id = $1::uuid", first["submission_id"])
    assert (row["first_name"], row["country"], row["email"]) == (
        "Mario",
        "IT",
        "Mario.Rossi@example.org",
    )
    assert len(row["email_hash"]) == 32
    assert (await counted_rows(pool))[CAMPAIGN.slug] == 7
    [totals] = await read_totals(pool, [CAMPAIGN.slug], min_count=1)
    assert totals.total == 7
    assert totals.by_country == {"IT": 1, "ES": 1, "FR": 5}
    # in public, countries under the threshold are one "other"; sources are never public
    [public] = await read_totals(pool, [CAMPAIGN.slug], min_count=5)
    assert public.by_country == {"FR": 5, "other": 2}
    sources = await pool.fetch(
        "SELECT key, count FROM campaign_breakdown WHERE campaign = $1 AND dimension = 'source'",
        CAMPAIGN.slug,
    )
    assert {r["key"]: r["count"] for r in sources} == {"web": 2, "partner:acme": 5}
    assert (
        await pool.fetchval(
            "SELECT duplicates FROM campaign_totals WHERE campaign = $1", CAMPAIGN.slug
        )
        == 2
    )

    dead = await read_to_end(settings, settings.topic_rejected)
    reasons = sorted(DeadLetterHeaders.from_kafka(list(r.headers)).reason.value for r in dead)
    assert reasons == sorted(
        [
            "invalid_email",
            "nul_byte",
            "invalid_field",
            "unknown_campaign",
            "campaign_closed",
            "invalid_country",
            "malformed_json",
            "invalid_encoding",
            "empty_record",
            "malformed_json",
        ]
    )
    for record in dead:
        headers = DeadLetterHeaders.from_kafka(list(record.headers))
        assert headers.origin_topic == settings.topic_submitted
        assert record.value in values  # the original payload, byte for byte
        header_text = b"".join(v for _, v in record.headers).decode()
        assert "example.org" not in header_text and "Nul" not in header_text

    accepted = [
        AcceptedEvent.model_validate_json(r.value)
        for r in await read_to_end(settings, settings.topic_accepted)
    ]
    assert len({e.signature_id for e in accepted}) == 7
    raw = b"".join(r.value for r in await read_to_end(settings, settings.topic_accepted))
    assert b"@" not in raw and b"Mario" not in raw


async def test_redelivery_changes_nothing(settings: Settings, pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    batch = [submission() for _ in range(50)] + [submission(email="same@example.org")] * 1
    batch.append(submission(email="SAME@example.org"))
    await produce(settings, encode(batch))
    first = await drain(settings)
    assert first["inserted"] == 51
    assert first["duplicates"] == 1
    [before] = await read_totals(pool, [CAMPAIGN.slug])

    # The same records again, as after a crash between the database commit and the offset
    # commit: a new consumer group starts from the beginning of the topic.
    again = settings.model_copy(update={"persist_group": settings.persist_group + "-again"})
    second = await drain(again)

    assert second.get("inserted", 0) == 0
    assert second["redelivered"] == 51
    [after] = await read_totals(pool, [CAMPAIGN.slug])
    assert after.total == before.total == 51
    assert after.version == before.version
    assert await pool.fetchval("SELECT count(*) FROM duplicate_submissions") == 1
    assert (await counted_rows(pool))[CAMPAIGN.slug] == 51


async def test_offsets_committed_after_the_batch(settings: Settings, pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    await produce(settings, encode([submission() for _ in range(30)]))
    await drain(settings)
    # A second run of the same group finds nothing left to do.
    second = await drain(settings)
    assert second == {}
    assert (await counted_rows(pool))[CAMPAIGN.slug] == 30


async def test_counter_publishes_exact_totals(settings: Settings, pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(
        pool,
        NewCampaign(confirmation=Confirmation.OFF, slug="quiet", title="t", target="t", goal=10),
    )
    people = [submission(country=c) for c in ("IT", "IT", "DE", "RU")]
    await produce(
        settings, encode([*people, people[0] | {"submission_id": submission()["submission_id"]}])
    )
    await drain(settings)
    await drain(settings, WorkerKind.COUNT)

    published: dict[str, dict[str, Any]] = {}
    for record in await read_to_end(settings, settings.topic_totals):
        value = json.loads(record.value)
        assert record.key.decode() == value["campaign"]
        if value["version"] >= published.get(value["campaign"], {"version": -1})["version"]:
            published[value["campaign"]] = value
    assert published[CAMPAIGN.slug]["total"] == 4
    assert published[CAMPAIGN.slug]["by_country"] == {"IT": 2, "DE": 1, "RU": 1}
    assert published[CAMPAIGN.slug]["goal"] == 200_000
    assert published["quiet"]["total"] == 0
    counts = await counted_rows(pool)
    assert {k: v["total"] for k, v in published.items()} == counts


async def test_no_personal_data_in_log_lines(settings: Settings, pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    sentinels = ["Sentinelname", "sentinel.person@example.org", "Zz9 9ZZ"]
    values = encode(
        [
            submission(first_name=sentinels[0], email=sentinels[1], postcode=sentinels[2]),
            submission(first_name=sentinels[0], email=sentinels[1].upper(), country="XX"),
            submission(first_name=sentinels[0] + "\x07", email="bad" + sentinels[1]),
        ]
    )
    await produce(settings, values)
    with structlog.testing.capture_logs() as logs:
        outcome = await drain(settings)
    assert outcome["inserted"] == 1
    assert outcome["dead_lettered"] == 2
    assert any(line["event"] == "batch" for line in logs)
    text = repr(logs).lower()
    for sentinel in sentinels:
        assert sentinel.lower() not in text


def test_accepted_event_json_is_the_contract() -> None:
    signature = StoredSignature(
        7,
        uuid.uuid4(),
        "cecenia",
        "IT",
        "partner:acme-2",
        datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
        "pending",
    )
    now = datetime.now(UTC)
    key, value, headers = _accepted(signature, now.isoformat(), 12)
    assert value is not None
    event = AcceptedEvent.model_validate_json(value)
    assert (key, headers) == (b"cecenia", [])
    assert event == AcceptedEvent(
        signature_id=7,
        submission_id=signature.submission_id,
        campaign="cecenia",
        country="IT",
        source="partner:acme-2",
        state="pending",
        submitted_at=signature.submitted_at,
        accepted_at=now,
        totals_version=12,
    )
