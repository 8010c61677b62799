"""Campaigns and their totals in PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from runtime.db import Queryable
from schemas.campaign import (
    Campaign,
    CampaignChanges,
    CampaignStatus,
    CampaignUpdate,
    Confirmation,
    NewCampaign,
    NewCampaignUpdate,
)
from schemas.events import CampaignTotals


class CampaignExists(Exception):
    pass


class UnknownCampaign(Exception):
    pass


async def create_campaign(pool: asyncpg.Pool, new: NewCampaign) -> Campaign:
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                """INSERT INTO campaigns (slug, title, target, goal, description, confirmation,
                                        retain_days)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
                new.slug,
                new.title,
                new.target,
                new.goal,
                new.description,
                new.confirmation.value,
                new.retain_days,
            )
        except asyncpg.UniqueViolationError:
            raise CampaignExists(new.slug) from None
        assert row is not None  # noqa: S101 - INSERT … RETURNING returns the row
        await conn.execute("INSERT INTO campaign_totals (campaign) VALUES ($1)", new.slug)
    return Campaign.model_validate(dict(row))


async def list_campaigns(pool: asyncpg.Pool) -> list[Campaign]:
    rows = await pool.fetch("SELECT * FROM campaigns ORDER BY created_at, slug")
    return [Campaign.model_validate(dict(row)) for row in rows]


async def close_campaign(pool: asyncpg.Pool, slug: str) -> Campaign:
    """Close a campaign; later submissions are rejected. The totals version moves on."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE campaigns SET status = 'closed', closed_at = coalesce(closed_at, now())
               WHERE slug = $1 RETURNING *""",
            slug,
        )
        if row is None:
            raise UnknownCampaign(slug)
        await _republish(conn, slug)
    return Campaign.model_validate(dict(row))


async def campaign_statuses(conn: Queryable) -> dict[str, CampaignStatus]:
    rows = await conn.fetch("SELECT slug, status FROM campaigns")
    return {row["slug"]: CampaignStatus(row["status"]) for row in rows}


async def campaign_rules(conn: Queryable) -> dict[str, tuple[CampaignStatus, Confirmation]]:
    """Per campaign: open or closed, and whether new signatures wait for confirmation."""
    rows = await conn.fetch("SELECT slug, status, confirmation FROM campaigns")
    return {
        row["slug"]: (CampaignStatus(row["status"]), Confirmation(row["confirmation"]))
        for row in rows
    }


_TOTALS_SQL = """
SELECT t.campaign, t.total, t.version, t.updated_at, c.goal, c.status,
       coalesce((SELECT jsonb_object_agg(b.key, b.count) FROM campaign_breakdown b
                 WHERE b.campaign = t.campaign AND b.dimension = 'country' AND b.count > 0),
                '{}') AS by_country
FROM campaign_totals t JOIN campaigns c ON c.slug = t.campaign
"""

OTHER = "other"  # where countries too small to show on their own are counted


def public_by_country(counts: dict[str, int], min_count: int) -> dict[str, int]:
    """Countries with fewer than `min_count` signatures merged into one "other" entry, so
    that a rare country cannot single a person out."""
    shown = {country: n for country, n in counts.items() if n >= min_count}
    merged = sum(n for country, n in counts.items() if n < min_count)
    return {**dict(sorted(shown.items())), OTHER: merged} if merged else dict(sorted(shown.items()))


def _totals(row: asyncpg.Record, min_count: int) -> CampaignTotals:
    values: dict[str, Any] = dict(row)
    values["by_country"] = public_by_country(json.loads(values["by_country"]), min_count)
    return CampaignTotals.model_validate(values)


async def read_totals(
    conn: Queryable, campaigns: list[str] | None = None, *, min_count: int = 10
) -> list[CampaignTotals]:
    """The public totals: confirmed signatures only, small countries merged, no sources."""
    if campaigns is None:
        rows = await conn.fetch(_TOTALS_SQL + " ORDER BY t.campaign")
    else:
        rows = await conn.fetch(
            _TOTALS_SQL + " WHERE t.campaign = ANY($1::text[]) ORDER BY t.campaign", campaigns
        )
    return [_totals(row, min_count) for row in rows]


async def totals_versions(conn: Queryable) -> dict[str, int]:
    rows = await conn.fetch("SELECT campaign, version FROM campaign_totals")
    return {row["campaign"]: int(row["version"]) for row in rows}


async def counted_rows(conn: Queryable) -> dict[str, int]:
    """COUNT(*) of the counted (confirmed) signatures per campaign, for checking the totals
    against the rows."""
    rows = await conn.fetch(
        "SELECT c.slug, count(s.id) AS n FROM campaigns c "
        "LEFT JOIN signatures s ON s.campaign = c.slug AND s.counted "
        "GROUP BY c.slug"
    )
    return {row["slug"]: int(row["n"]) for row in rows}


async def get_campaign(conn: Queryable, slug: str) -> Campaign | None:
    row = await conn.fetchrow("SELECT * FROM campaigns WHERE slug = $1", slug)
    return Campaign.model_validate(dict(row)) if row else None


async def update_campaign(pool: asyncpg.Pool, slug: str, changes: CampaignChanges) -> Campaign:
    """Change title, target, goal, description, confirmation or retention; the totals
    version moves on when the goal changes (a public number). A change of confirmation
    applies to signatures stored from then on: those already pending still wait for their
    owners."""
    values = changes.model_dump(exclude_none=True, mode="json")
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval("SELECT goal FROM campaigns WHERE slug = $1", slug)
        row = await conn.fetchrow(
            """UPDATE campaigns SET title = coalesce($2, title), target = coalesce($3, target),
                      goal = coalesce($4, goal), description = coalesce($5, description),
                      confirmation = coalesce($6, confirmation),
                      retain_days = coalesce($7, retain_days)
               WHERE slug = $1 RETURNING *""",
            slug,
            values.get("title"),
            values.get("target"),
            values.get("goal"),
            values.get("description"),
            values.get("confirmation"),
            values.get("retain_days"),
        )
        if row is None:
            raise UnknownCampaign(slug)
        if row["goal"] != before:
            await _republish(conn, slug)
    return Campaign.model_validate(dict(row))


async def post_update(pool: asyncpg.Pool, slug: str, update: NewCampaignUpdate) -> CampaignUpdate:
    try:
        row = await pool.fetchrow(
            """INSERT INTO campaign_updates (campaign, posted_on, title, body)
               VALUES ($1, $2, $3, $4) RETURNING id, campaign, posted_on, title, body""",
            slug,
            update.posted_on,
            update.title,
            update.body,
        )
    except asyncpg.ForeignKeyViolationError:
        raise UnknownCampaign(slug) from None
    assert row is not None  # noqa: S101 - INSERT … RETURNING returns the row
    return CampaignUpdate.model_validate(dict(row))


async def list_updates(conn: Queryable, slug: str) -> list[CampaignUpdate]:
    rows = await conn.fetch(
        """SELECT id, campaign, posted_on, title, body FROM campaign_updates
           WHERE campaign = $1 ORDER BY posted_on DESC, id DESC""",
        slug,
    )
    return [CampaignUpdate.model_validate(dict(row)) for row in rows]


async def _republish(conn: Queryable, slug: str) -> None:
    """A new totals version, so the counter publishes what changed (status, goal)."""
    await conn.execute(
        "UPDATE campaign_totals SET version = version + 1, updated_at = now() WHERE campaign = $1",
        slug,
    )
