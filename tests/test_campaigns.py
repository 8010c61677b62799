"""Campaign content: title, target, goal and dated updates, through the CLI and the database."""

from __future__ import annotations

import asyncio
from datetime import date

import asyncpg
import pytest
from typer.testing import CliRunner

from cli.main import app
from ingest.seed import SEED_CAMPAIGN, ensure_seed_campaign
from runtime.campaigns import (
    UnknownCampaign,
    create_campaign,
    get_campaign,
    list_updates,
    post_update,
    read_totals,
    update_campaign,
)
from runtime.db import create_pool
from runtime.settings import Settings, settings_env
from schemas.campaign import CampaignChanges, NewCampaignUpdate
from tests.helpers import CAMPAIGN

pytestmark = pytest.mark.integration


async def test_update_changes_only_what_is_given_and_moves_the_version(
    pool: asyncpg.Pool,
) -> None:
    await create_campaign(pool, CAMPAIGN)
    [before] = await read_totals(pool, [CAMPAIGN.slug])
    updated = await update_campaign(pool, CAMPAIGN.slug, CampaignChanges(goal=250_000))
    assert (updated.goal, updated.title, updated.target) == (250_000, "Cecenia", CAMPAIGN.target)
    [after] = await read_totals(pool, [CAMPAIGN.slug])
    assert (after.goal, after.version) == (250_000, before.version + 1)  # republished
    with pytest.raises(UnknownCampaign):
        await update_campaign(pool, "nessuna", CampaignChanges(title="x"))


async def test_updates_are_listed_newest_first(pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    for day, title in [(date(2026, 10, 1), "Lancio"), (date(2026, 11, 20), "Consegna")]:
        await post_update(
            pool, CAMPAIGN.slug, NewCampaignUpdate(posted_on=day, title=title, body="…")
        )
    assert [u.title for u in await list_updates(pool, CAMPAIGN.slug)] == ["Consegna", "Lancio"]
    with pytest.raises(UnknownCampaign):
        await post_update(
            pool, "nessuna", NewCampaignUpdate(posted_on=date(2026, 1, 1), title="x", body="y")
        )


@pytest.mark.slow
def test_cli_update_and_post_update(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    create = ["campaign", "create", "--slug", "cecenia", "--title", "Cecenia", "--target", "X"]
    assert runner.invoke(app, [*create, "--goal", "10"]).exit_code == 0
    changed = runner.invoke(
        app, ["campaign", "update", "--slug", "cecenia", "--target", "Autorità federali russe"]
    )
    assert changed.exit_code == 0, changed.output
    post = ["campaign", "post-update", "--slug", "cecenia", "--title", "Consegna"]
    posted = runner.invoke(app, [*post, "--body", "Firme consegnate.", "--date", "2026-11-20"])
    assert posted.exit_code == 0, posted.output
    refused = runner.invoke(app, ["campaign", "update", "--slug", "cecenia", "--goal", "0"])
    assert refused.exit_code == 2
    assert "--goal" in refused.output
    missing = runner.invoke(app, ["campaign", "post-update", "--slug", "nessuna", "--title", "t",
                                  "--body", "b"])  # fmt: skip
    assert missing.exit_code == 1

    async def stored() -> tuple[str, list[str]]:
        own = await create_pool(settings.database_url, max_size=1)
        try:
            campaign = await get_campaign(own, "cecenia")
            assert campaign is not None
            return campaign.target, [u.title for u in await list_updates(own, "cecenia")]
        finally:
            await own.close()

    assert asyncio.run(stored()) == ("Autorità federali russe", ["Consegna"])


async def test_the_seed_campaign_is_created_once_with_its_updates(pool: asyncpg.Pool) -> None:
    await ensure_seed_campaign(pool)
    await ensure_seed_campaign(pool)  # `up` and `demo` run it every time
    campaign = await get_campaign(pool, SEED_CAMPAIGN.slug)
    assert campaign is not None and campaign.target == "Autorità federali russe"
    updates = await list_updates(pool, SEED_CAMPAIGN.slug)
    assert [u.posted_on.day for u in updates] == [12, 11, 5]  # newest first
