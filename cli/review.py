"""The `signatures review` commands: list what the silent flags hold, accept or invalidate.

Registered on the `signatures` command by cli/main.py. Every command shows counts,
address prefixes and email domains, never an email or a name.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cli.shared import command_settings as _settings
from cli.shared import run_with_pool as _run
from ops.review import Held, NoFilter, ReviewOutcome, Selection, apply_review, held_for_review
from schemas.flags import Flag, Review

review_app = typer.Typer(
    help="Signatures held by silent flags: list them, accept or invalidate them.",
    no_args_is_help=True,
)
out = Console()
T = TypeVar("T")

CampaignOption = Annotated[str, typer.Option("--campaign", help="The campaign's slug")]
ReasonOption = Annotated[
    Flag | None, typer.Option("--reason", help="Only signatures flagged for this reason")
]
PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--ip-prefix",
        help="Only signatures from this network (203.0.113.0/24, 2001:db8:1::/48, or wider)",
    ),
]
DomainOption = Annotated[str | None, typer.Option("--domain", help="Only this email domain")]
SinceOption = Annotated[
    datetime | None, typer.Option(help="Only signatures received since (ISO time, UTC if naive)")
]
UntilOption = Annotated[
    datetime | None, typer.Option(help="Only signatures received before (ISO time, UTC if naive)")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show how many signatures it would touch; change nothing")
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object")]


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@review_app.command("list")
def review_list(campaign: Annotated[str | None, typer.Option(help="Only this campaign")] = None,
                as_json: JsonOption = False) -> None:  # fmt: skip
    """Signatures held for review, by reason, address prefix and email domain."""
    s = _settings()
    found = _run(s, lambda pool: held_for_review(pool, campaign))
    if as_json:
        typer.echo(json.dumps({"campaigns": [vars(h) for h in found]}))
        return
    if not found:
        out.print("nothing flagged")
    for held in found:
        out.print(*_tables(held))


def _tables(held: Held) -> list[Table]:
    summary = Table(title=f"{held.campaign}: held for review", title_justify="left")
    summary.add_column("reason")
    summary.add_column("held", justify="right")
    for reason, n in held.by_reason.items():
        summary.add_row(reason, f"{n:,}")
    summary.add_row("[bold]all[/]", f"[bold]{held.held:,}[/]")
    summary.add_row("of which confirmed (would count if accepted)", f"{held.held_confirmed:,}")
    summary.add_row("accepted before", f"{held.accepted:,}")
    summary.add_row("invalidated before", f"{held.invalidated:,}")
    tables = [summary]
    for title, counts in (("address prefix", held.by_prefix), ("email domain", held.by_domain)):
        table = Table(title=f"{held.campaign}: held, by {title}", title_justify="left")
        table.add_column(title)
        table.add_column("held", justify="right")
        for key, n in counts.items():
            table.add_row(key, f"{n:,}")
        tables.append(table)
    return tables


def _decide(to: Review, selection: Selection, dry_run: bool, as_json: bool) -> None:
    s = _settings()
    try:
        outcome = _run(s, lambda pool: apply_review(pool, selection, to, dry_run=dry_run))
    except NoFilter as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None
    except LookupError:
        typer.echo(f"no such campaign: {selection.campaign}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({**vars(outcome), "total_after": outcome.total_after}))
    else:
        typer.echo(_sentence(outcome))


def _sentence(o: ReviewOutcome) -> str:
    verb, done = {
        Review.ACCEPTED: ("accept", "accepted"),
        Review.INVALIDATED: ("invalidate", "invalidated"),
    }[o.review]
    total = f"the public total of {o.campaign} "
    if o.counted_change:
        total += f"{'would go' if o.dry_run else 'went'} from {o.total_before:,} to "
        total += f"{o.total_after:,}" + ("" if o.dry_run else f" (version {o.version})")
    else:
        total += f"{'would stay' if o.dry_run else 'stays'} {o.total_before:,}"
    if o.dry_run:
        return f"dry run: would {verb} {o.touched:,} signatures; {total}; nothing changed"
    return f"{done} {o.touched:,} signatures; {total}"


def _selection(campaign: str, reason: Flag | None, ip_prefix: str | None, domain: str | None,
               since: datetime | None, until: datetime | None) -> Selection:  # fmt: skip
    if ip_prefix is not None:
        from ops.review import stored_granularity

        try:
            stored_granularity(ip_prefix)
        except ValueError:
            raise typer.BadParameter(
                "not an address or network", param_hint="--ip-prefix"
            ) from None
    return Selection(campaign, reason, ip_prefix, domain, _utc(since), _utc(until))


@review_app.command("accept")
def review_accept(
    campaign: CampaignOption,
    reason: ReasonOption = None,
    ip_prefix: PrefixOption = None,
    domain: DomainOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Let flagged signatures count: confirmed ones at once, pending ones once confirmed.

    Without filters, every signature of the campaign still held for review.
    """
    selection = _selection(campaign, reason, ip_prefix, domain, since, until)
    _decide(Review.ACCEPTED, selection, dry_run, as_json)


@review_app.command("invalidate")
def review_invalidate(
    campaign: CampaignOption,
    reason: ReasonOption = None,
    ip_prefix: PrefixOption = None,
    domain: DomainOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Take signatures out of the count for good, flagged or not, counted or not.

    Needs at least one filter; run it with --dry-run first.
    """
    selection = _selection(campaign, reason, ip_prefix, domain, since, until)
    _decide(Review.INVALIDATED, selection, dry_run, as_json)
