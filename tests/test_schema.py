"""The schema's own guarantees, in the real database."""

from __future__ import annotations

import asyncpg
import pytest

from runtime.campaigns import close_campaign, create_campaign
from runtime.db import apply_migrations
from tests.helpers import CAMPAIGN

pytestmark = pytest.mark.integration


async def test_campaigns_are_closed_never_deleted(pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    with pytest.raises(asyncpg.RestrictViolationError, match="never deleted"):
        await pool.execute("DELETE FROM campaigns WHERE slug = $1", CAMPAIGN.slug)
    with pytest.raises(asyncpg.RestrictViolationError, match="never deleted"):
        await pool.execute("TRUNCATE campaigns CASCADE")
    await close_campaign(pool, CAMPAIGN.slug)
    assert await pool.fetchval("SELECT status FROM campaigns") == "closed"


async def test_migrations_are_applied_once(database_url: str, pool: asyncpg.Pool) -> None:
    before = await pool.fetch("SELECT * FROM schema_migrations ORDER BY 1")
    await apply_migrations(database_url)
    assert await pool.fetch("SELECT * FROM schema_migrations ORDER BY 1") == before
    assert len(before) >= 2
