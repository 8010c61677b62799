"""`signatures campaign`: create, update, post an update to, list and close campaigns."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import asyncpg
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from cli.shared import command_settings as settings
from cli.shared import run
from cli.shared import with_pool as _with_pool

campaign_app = typer.Typer(help="Create, list and close campaigns.", no_args_is_help=True)
out = Console()
T = TypeVar("T")

ConfirmationOption = Annotated[
    str,
    typer.Option(
        help="required: a signature counts once its owner confirms it by email (double "
        "opt-in); off: it counts at once, for sources that confirmed people themselves"
    ),
]
RETAIN_DAYS_HELP = (
    "Days the signers' names, emails and postcodes are kept once the campaign is closed "
    "(0: until the next `signatures retention run`); totals stay"
)
RetainDaysOption = Annotated[int, typer.Option(help=RETAIN_DAYS_HELP)]


@campaign_app.command("create")
def campaign_create(
    slug: Annotated[str, typer.Option(help="URL name, e.g. cecenia")],
    title: Annotated[str, typer.Option()],
    target: Annotated[str, typer.Option(help="Who the petition is addressed to")],
    goal: Annotated[int, typer.Option(help="Signature goal")],
    description: Annotated[str, typer.Option()] = "",
    confirmation: ConfirmationOption = "required",
    retain_days: RetainDaysOption = 180,
) -> None:
    """Create an open campaign."""
    from runtime.campaigns import CampaignExists, create_campaign
    from schemas.campaign import NewCampaign

    new = _validated(
        NewCampaign, slug=slug, title=title, target=target, goal=goal, description=description,
        confirmation=confirmation, retain_days=retain_days,
    )  # fmt: skip
    s = settings()
    try:
        created = run(lambda: _with_pool(s, lambda pool: create_campaign(pool, new)))
    except CampaignExists:
        typer.echo(f"campaign {slug} already exists", err=True)
        raise typer.Exit(1) from None
    out.print(
        f"created campaign {created.slug} (goal {created.goal:,}, "
        f"confirmation {created.confirmation}, retain {created.retain_days} days)"
    )


@campaign_app.command("update")
def campaign_update(
    slug: Annotated[str, typer.Option(help="The campaign")],
    title: Annotated[str | None, typer.Option()] = None,
    target: Annotated[str | None, typer.Option(help="Who the petition is addressed to")] = None,
    goal: Annotated[int | None, typer.Option(help="Signature goal")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    confirmation: Annotated[
        str | None,
        typer.Option(help="required|off: whether new signatures wait for email confirmation"),
    ] = None,
    retain_days: Annotated[int | None, typer.Option(help=RETAIN_DAYS_HELP)] = None,
) -> None:
    """Change a campaign's title, target, goal, description, confirmation or retention."""
    from runtime.campaigns import update_campaign
    from schemas.campaign import CampaignChanges

    changes = _validated(
        CampaignChanges, title=title, target=target, goal=goal, description=description,
        confirmation=confirmation, retain_days=retain_days,
    )  # fmt: skip
    updated = _change_campaign(slug, lambda pool: update_campaign(pool, slug, changes))
    out.print(
        f"updated campaign {updated.slug}: {updated.title} (goal {updated.goal:,}, "
        f"confirmation {updated.confirmation}, retain {updated.retain_days} days)"
    )


@campaign_app.command("post-update")
def campaign_post_update(
    slug: Annotated[str, typer.Option(help="The campaign")],
    title: Annotated[str, typer.Option(help="Headline of the update")],
    body: Annotated[str, typer.Option(help="Text of the update (plain text)")],
    posted_on: Annotated[
        datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="Default: today")
    ] = None,
) -> None:
    """Add a dated update to a campaign's page."""
    from runtime.campaigns import post_update
    from schemas.campaign import NewCampaignUpdate

    day = (posted_on or datetime.now(UTC)).date()
    update = _validated(NewCampaignUpdate, posted_on=day, title=title, body=body)
    posted = _change_campaign(slug, lambda pool: post_update(pool, slug, update))
    out.print(f"posted update {posted.id} to {slug} ({posted.posted_on.isoformat()})")


M = TypeVar("M", bound="BaseModel")


def _change_campaign(slug: str, change: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run a change of one campaign; an unknown campaign is one line and exit 1."""
    from runtime.campaigns import UnknownCampaign

    s = settings()
    try:
        return run(lambda: _with_pool(s, change))
    except UnknownCampaign:
        typer.echo(f"no campaign {slug}", err=True)
        raise typer.Exit(1) from None


def _validated(model: type[M], **values: object) -> M:
    """The model, or one line per bad option naming it, and exit 2."""
    from pydantic import ValidationError

    from schemas.submission import field_errors

    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        for error in field_errors(exc):
            typer.echo(f"--{error.field.replace('_', '-')}: {error.reason.value}", err=True)
        raise typer.Exit(2) from None


@campaign_app.command("list")
def campaign_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array")] = False,
) -> None:
    """List campaigns with their totals."""
    from runtime.campaigns import list_campaigns, read_totals

    s = settings()

    async def go(pool: asyncpg.Pool) -> list[dict[str, object]]:
        totals = {t.campaign: t.total for t in await read_totals(pool)}
        return [
            {**c.model_dump(mode="json"), "total": totals.get(c.slug, 0)}
            for c in await list_campaigns(pool)
        ]

    rows = run(lambda: _with_pool(s, go))
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("slug", "status", "confirmation", "total", "goal", "title", "target")
    for row in rows:
        table.add_row(
            str(row["slug"]),
            str(row["status"]),
            str(row["confirmation"]),
            f"{row['total']:,}",
            f"{row['goal']:,}",
            str(row["title"]),
            str(row["target"]),
        )
    out.print(table)


@campaign_app.command("close")
def campaign_close(slug: Annotated[str, typer.Argument()]) -> None:
    """Close a campaign: later submissions are rejected (campaign_closed)."""
    from runtime.campaigns import close_campaign

    _change_campaign(slug, lambda pool: close_campaign(pool, slug))
    out.print(f"closed campaign {slug}")
