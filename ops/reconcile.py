"""`signatures reconcile`: recount every campaign from its rows and correct any drift.

The persist workers keep `campaign_totals` and `campaign_breakdown` exact in the same
transaction as the rows they count, so drift only comes from outside (a row deleted or
restored by hand, a bug). This is the safety net: per campaign, one transaction that
blocks the workers' totals updates (a SHARE ROW EXCLUSIVE lock on `campaign_breakdown`,
which every persist transaction writes before it updates the total), counts the rows,
and writes the true figures with a new version if they differ. A persist transaction that
was waiting then adds its own rows on top of the corrected figures, so nothing is lost or
counted twice. The corrected totals are then published on the totals topic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer

from runtime.campaigns import read_totals
from runtime.db import Conn
from runtime.kafka import make_producer
from runtime.settings import Settings


@dataclass(frozen=True)
class Correction:
    campaign: str
    total: tuple[int, int]  # stored before, counted now (the rows that count)
    duplicates: tuple[int, int]
    breakdown: dict[str, tuple[int, int]] = field(default_factory=dict)  # "country:IT"
    version: int = 0  # the version that carries the corrected figures (0: unchanged)
    pending: tuple[int, int] = (0, 0)

    @property
    def changed(self) -> bool:
        return self.version > 0


# What counts is the rows' `counted` column: confirmed, and not held by a flag or
# invalidated (schemas/migrations/0008_flags.sql), the same definition every writer reads.
_COUNTS = """
SELECT (SELECT count(*) FROM signatures WHERE campaign = $1 AND counted) AS total,
       (SELECT count(*) FROM signatures WHERE campaign = $1 AND state = 'pending') AS pending,
       (SELECT count(*) FROM duplicate_submissions WHERE campaign = $1) AS duplicates
"""
_BREAKDOWN = """
SELECT 'country' AS dimension, country AS key, count(*) AS n
FROM signatures WHERE campaign = $1 AND counted GROUP BY country
UNION ALL
SELECT 'source', source, count(*) FROM signatures WHERE campaign = $1 AND counted
GROUP BY source
"""
_SET_BREAKDOWN = """
INSERT INTO campaign_breakdown (campaign, dimension, key, count)
VALUES ($1, $2, $3, $4)
ON CONFLICT (campaign, dimension, key) DO UPDATE SET count = excluded.count
"""
_SET_TOTALS = """
UPDATE campaign_totals
SET total = $2, pending = $3, duplicates = $4, version = version + 1, updated_at = now()
WHERE campaign = $1
RETURNING version
"""


async def reconcile_campaign(conn: Conn, campaign: str) -> Correction:
    async with conn.transaction():
        await conn.execute("LOCK TABLE campaign_breakdown IN SHARE ROW EXCLUSIVE MODE")
        stored = await conn.fetchrow(
            "SELECT total, pending, duplicates FROM campaign_totals WHERE campaign = $1 FOR UPDATE",
            campaign,
        )
        if stored is None:
            raise LookupError(campaign)
        counted = await conn.fetchrow(_COUNTS, campaign)
        assert counted is not None  # noqa: S101 - a SELECT without FROM returns one row
        actual = {
            f"{r['dimension']}:{r['key']}": r["n"] for r in await conn.fetch(_BREAKDOWN, campaign)
        }
        kept = {
            f"{r['dimension']}:{r['key']}": r["count"]
            for r in await conn.fetch(
                "SELECT dimension, key, count FROM campaign_breakdown WHERE campaign = $1",
                campaign,
            )
        }
        breakdown = {
            key: (kept.get(key, 0), actual.get(key, 0))
            for key in sorted(actual.keys() | kept.keys())
            if kept.get(key, 0) != actual.get(key, 0)
        }
        correction = Correction(
            campaign,
            total=(stored["total"], counted["total"]),
            duplicates=(stored["duplicates"], counted["duplicates"]),
            breakdown=breakdown,
            pending=(stored["pending"], counted["pending"]),
        )
        if (
            correction.total[0] == correction.total[1]
            and correction.duplicates[0] == correction.duplicates[1]
            and correction.pending[0] == correction.pending[1]
            and not breakdown
        ):
            return correction
        for key, (_, count) in breakdown.items():
            dimension, value = key.split(":", 1)
            await conn.execute(_SET_BREAKDOWN, campaign, dimension, value, count)
        version = await conn.fetchval(
            _SET_TOTALS, campaign, counted["total"], counted["pending"], counted["duplicates"]
        )
        return Correction(
            campaign,
            correction.total,
            correction.duplicates,
            breakdown,
            int(version),
            correction.pending,
        )


async def publish(
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    topic: str,
    campaigns: list[str],
    *,
    min_count: int,
) -> None:
    """The current totals of these campaigns on the totals topic (readers keep the highest)."""
    futures = [
        await producer.send(topic, key=t.campaign.encode(), value=t.model_dump_json().encode())
        for t in await read_totals(pool, campaigns, min_count=min_count)
    ]
    for future in futures:
        await future


async def reconcile(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda _campaign: None,
) -> list[Correction]:
    """Recount every campaign; correct and publish what drifted (nothing, with dry_run)."""
    campaigns = [
        r["campaign"] for r in await pool.fetch("SELECT campaign FROM campaign_totals ORDER BY 1")
    ]
    corrections = []
    async with pool.acquire() as conn:
        for campaign in campaigns:
            if dry_run:
                tx = conn.transaction()
                await tx.start()
                try:
                    corrections.append(await reconcile_campaign(conn, campaign))
                finally:
                    await tx.rollback()
            else:
                corrections.append(await reconcile_campaign(conn, campaign))
            progress(campaign)
    changed = [c.campaign for c in corrections if c.changed]
    if changed and not dry_run:
        producer = make_producer(settings)
        await producer.start()
        try:
            await publish(
                producer, pool, settings.topic_totals, changed, min_count=settings.public_min_count
            )
        finally:
            await producer.stop()
    return corrections
