"""Retention: closed campaigns past their retention lose their signers' personal data,
totals and breakdowns stay; topics that carry personal data have an explicit retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumers.service import WorkerKind, run_worker
from ops.retention import anonymise_campaign, due_campaigns, run_retention
from runtime.abuse_settings import duration_ms
from runtime.campaigns import close_campaign, create_campaign
from runtime.kafka import client_options
from runtime.settings import ConfigError, Settings, load_settings
from runtime.topics import ensure_topics, pii_topic_configs
from schemas.campaign import NewCampaign
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN, encode, produce, submission

# --- pure logic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("7d", 604_800_000), ("12h", 43_200_000), ("30m", 1_800_000), (" 90S ", 90_000),
     ("500ms", 500), ("2w", 1_209_600_000)],
)  # fmt: skip
def test_durations(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "7", "0d", "-1d", "7 days", "1.5h", "P7D"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        duration_ms(text)


def test_a_bad_topic_retention_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNATURES_PII_TOPIC_RETENTION", "a week")
    with pytest.raises(ConfigError, match=r"^SIGNATURES_PII_TOPIC_RETENTION: "):
        load_settings()


def test_pii_topics_get_an_explicit_retention() -> None:
    s = make_settings("postgresql://x@127.0.0.1/x", "127.0.0.1:9", pii_topic_retention="36h")
    assert pii_topic_configs(s) == {"cleanup.policy": "delete", "retention.ms": "129600000"}
    assert pii_topic_configs(make_settings("postgresql://x@127.0.0.1/x", "127.0.0.1:9"))[
        "retention.ms"
    ] == str(7 * 24 * 3600 * 1000)


@pytest.mark.integration
async def test_the_broker_creates_the_pii_topics_with_their_retention(
    kafka_bootstrap: str, database_url: str
) -> None:
    s = make_settings(database_url, kafka_bootstrap, pii_topic_retention="2d")
    await ensure_topics(s, kafka_bootstrap)
    admin = AIOKafkaAdminClient(**client_options(s))
    await admin.start()
    try:
        described = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic)
                for topic in (s.topic_submitted, s.topic_rejected, s.topic_accepted)
            ]
        )
    finally:
        await admin.close()
    configs = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}
        for response in described
        for resource in response.resources
    }
    for topic in (s.topic_submitted, s.topic_rejected):
        assert configs[topic].get("retention.ms") == str(2 * 86_400_000), configs[topic]
    # the accepted events carry no personal data: the cluster's default
    assert configs[s.topic_accepted].get("retention.ms") != str(2 * 86_400_000)


# --- against PostgreSQL -------------------------------------------------------------------


def campaign(slug: str, retain_days: int) -> NewCampaign:
    return CAMPAIGN.model_copy(update={"slug": slug, "retain_days": retain_days})


async def snapshot(pool: asyncpg.Pool, slug: str) -> dict[str, Any]:
    totals = await pool.fetchrow(
        "SELECT total, pending, duplicates, version, updated_at FROM campaign_totals "
        "WHERE campaign = $1",
        slug,
    )
    assert totals is not None
    breakdown = await pool.fetch(
        "SELECT dimension, key, count FROM campaign_breakdown WHERE campaign = $1 "
        "ORDER BY dimension, key",
        slug,
    )
    return {"totals": dict(totals), "breakdown": [tuple(r) for r in breakdown]}


async def personal(pool: asyncpg.Pool, slug: str) -> int:
    """Rows of the campaign that still hold any personal data."""
    return int(
        await pool.fetchval(
            """SELECT count(*) FROM signatures WHERE campaign = $1 AND (
                   pii IS NOT NULL OR key_id IS NOT NULL
                   OR email <> '' OR first_name <> '' OR last_name <> '' OR postcode IS NOT NULL
                   OR email_hash IS NOT NULL OR client_prefix IS NOT NULL
                   OR client_hash IS NOT NULL OR email_domain IS NOT NULL)""",
            slug,
        )
    )


async def closed_days_ago(pool: asyncpg.Pool, slug: str, days: float) -> None:
    await close_campaign(pool, slug)
    await pool.execute(
        "UPDATE campaigns SET closed_at = now() - make_interval(secs => $2) WHERE slug = $1",
        slug,
        days * 86_400,
    )


@pytest.mark.integration
async def test_retention_anonymises_only_closed_campaigns_past_their_retention(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    due, recent, immediate, still_open = (
        campaign("scaduta", 30), campaign("recente", 30), campaign("subito", 0),
        campaign("aperta", 0),
    )  # fmt: skip
    for new in (due, recent, immediate, still_open):
        await create_campaign(pool, new)
    people = [
        submission(
            campaign=new.slug, postcode="00100", country=country,
            client_prefix="203.0.113.0/24", client_hash="ab" * 16,
        )
        for new in (due, recent, immediate, still_open)
        for country in ("IT", "RU", "IT")
    ]  # fmt: skip
    await produce(settings, encode(people))
    await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 90
    )
    await closed_days_ago(pool, due.slug, 31)
    await closed_days_ago(pool, recent.slug, 29)
    await closed_days_ago(pool, immediate.slug, 0)
    async with pool.acquire() as conn:
        token_for = await conn.fetchval(
            "SELECT submission_id FROM signatures WHERE campaign = $1 LIMIT 1", due.slug
        )
        await conn.execute(
            "INSERT INTO confirmation_tokens (token_hash, submission_id, campaign, expires_at) "
            "VALUES ('\\x01', $1, $2, now())",
            token_for,
            due.slug,
        )
    before = {c.slug: await snapshot(pool, c.slug) for c in (due, recent, immediate, still_open)}
    assert {c.slug: await personal(pool, c.slug) for c in (due, recent)} == {
        due.slug: 3,
        recent.slug: 3,
    }

    keys_of = "SELECT count(*) FROM data_keys WHERE campaign = $1"
    assert [await pool.fetchval(keys_of, c.slug) for c in (due, recent)] == [1, 1]
    # what a backup taken now holds of a signer of the due campaign: a blob and its key id
    backup = await pool.fetchrow(
        "SELECT key_id, pii FROM signatures WHERE campaign = $1 LIMIT 1", due.slug
    )
    assert backup is not None and backup["pii"] is not None

    now = datetime.now(UTC)
    dry = await run_retention(pool, now, dry_run=True)

    assert [(a.campaign, a.signatures, a.tokens) for a in dry] == [
        (due.slug, 3, 1),
        (immediate.slug, 3, 0),
    ]
    assert await personal(pool, due.slug) == 3  # a dry run changes nothing
    assert await pool.fetchval("SELECT count(*) FROM confirmation_tokens") == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM campaigns WHERE anonymised_at IS NOT NULL") == 0
    )

    done = await run_retention(pool, now)

    assert [(a.campaign, a.signatures, a.tokens) for a in done] == [
        (due.slug, 3, 1),
        (immediate.slug, 3, 0),
    ]
    assert (await personal(pool, due.slug), await personal(pool, immediate.slug)) == (0, 0)
    # the data keys are destroyed: the backup's blob has no key left to open it
    assert [await pool.fetchval(keys_of, c.slug) for c in (due, immediate)] == [0, 0]
    assert (
        await pool.fetchval("SELECT count(*) FROM data_keys WHERE id = $1", backup["key_id"]) == 0
    )
    assert [await pool.fetchval(keys_of, c.slug) for c in (recent, still_open)] == [1, 1]
    assert (await personal(pool, recent.slug), await personal(pool, still_open.slug)) == (3, 3)
    assert await pool.fetchval("SELECT count(*) FROM confirmation_tokens") == 0
    for c in (due, recent, immediate, still_open):  # totals, breakdowns, versions: as they were
        assert await snapshot(pool, c.slug) == before[c.slug]
    kept = await pool.fetch(
        "SELECT country, source, state FROM signatures WHERE campaign = $1", due.slug
    )
    assert sorted(r["country"] for r in kept) == ["IT", "IT", "RU"]
    marked = await pool.fetch("SELECT slug FROM campaigns WHERE anonymised_at IS NOT NULL")
    assert sorted(r["slug"] for r in marked) == sorted([due.slug, immediate.slug])

    # again: nothing due, nothing more to clear
    assert await run_retention(pool, datetime.now(UTC)) == []
    assert await due_campaigns(pool, datetime.now(UTC) + timedelta(days=1)) == [recent.slug]


@pytest.mark.integration
async def test_an_open_campaign_is_never_anonymised(pool: asyncpg.Pool) -> None:
    await create_campaign(pool, campaign("aperta", 0))
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match="not closed"):
            await anonymise_campaign(conn, "aperta")
    assert await due_campaigns(pool, datetime.now(UTC) + timedelta(days=3650)) == []
