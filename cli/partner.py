"""`signatures partner`: issue, list and revoke partners' keys."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.shared import command_settings as settings
from cli.shared import run
from cli.shared import with_pool as _with_pool

partner_app = typer.Typer(help="Partner keys: create, list, revoke.", no_args_is_help=True)
out = Console()


@partner_app.command("create")
def partner_create(
    name: Annotated[
        str, typer.Option(help="Lower-case letters, digits and '-'; its source is partner:NAME")
    ],
    campaign: Annotated[
        list[str] | None,
        typer.Option("--campaign", help="A campaign the key may sign (repeatable; default: all)"),
    ] = None,
    confirmed: Annotated[
        bool,
        typer.Option(
            "--confirmed",
            help="The partner confirms its signers itself: on campaigns that require "
            "confirmation its signatures count at once, without our email",
        ),
    ] = False,
) -> None:
    """Issue a partner's key and print it once on stdout; only its hash is kept.

    Refused while the name has a key in use (revoke it first); a revoked name gets a new key.
    """
    from runtime.partners import NAME_PATTERN, PartnerExists, UnknownCampaigns, create_partner

    if not NAME_PATTERN.match(name):
        typer.echo("--name: invalid_field (lower-case letters, digits and '-')", err=True)
        raise typer.Exit(2)
    s = settings()
    try:
        partner, key = run(
            lambda: _with_pool(
                s, lambda pool: create_partner(pool, name, campaign, confirms=confirmed)
            )
        )
    except PartnerExists:
        typer.echo(f"partner {name} already has a key in use: revoke it first", err=True)
        raise typer.Exit(1) from None
    except UnknownCampaigns as exc:
        typer.echo(f"no campaign {', '.join(exc.slugs)}", err=True)
        raise typer.Exit(1) from None
    typer.echo(key)
    scope = ", ".join(sorted(partner.campaigns)) if partner.campaigns else "every campaign"
    typer.echo(
        f"key for partner {name} ({scope}; "
        f"{'confirms its signers' if partner.confirms else 'signers confirm by email'}) "
        "printed on stdout; it is not stored and will not be shown again",
        err=True,
    )


@partner_app.command("list")
def partner_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array")] = False,
) -> None:
    """Every partner key issued, revoked ones too: scope, times; never the keys."""
    from runtime.partners import list_partners

    s = settings()
    partners = run(lambda: _with_pool(s, list_partners))
    rows = [
        {
            "name": p.name,
            "campaigns": sorted(p.campaigns) if p.campaigns is not None else None,
            "confirms": p.confirms,
            "created_at": p.created_at.isoformat(),
            "last_used_at": p.last_used_at.isoformat() if p.last_used_at else None,
            "revoked_at": p.revoked_at.isoformat() if p.revoked_at else None,
        }
        for p in partners
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(
        "name", "campaigns", "confirms", "created (UTC)", "last used (UTC)", "revoked (UTC)"
    )
    for row in rows:
        campaigns = row["campaigns"]
        table.add_row(
            str(row["name"]),
            ", ".join(campaigns) if isinstance(campaigns, list) else "all",
            "yes" if row["confirms"] else "no",
            *(_minute(row[k]) for k in ("created_at", "last_used_at", "revoked_at")),
        )
    out.print(table)


def _minute(value: object) -> str:
    return str(value)[:16].replace("T", " ") if value else "-"


@partner_app.command("revoke")
def partner_revoke(name: Annotated[str, typer.Argument()]) -> None:
    """Revoke a partner's key: every API process refuses it within seconds (401)."""
    from runtime.partners import UnknownPartner, revoke_partner

    s = settings()
    try:
        revoked = run(lambda: _with_pool(s, lambda pool: revoke_partner(pool, name)))
    except UnknownPartner:
        typer.echo(f"no partner {name}", err=True)
        raise typer.Exit(1) from None
    out.print(f"revoked the key of partner {name}" if revoked else f"{name} was already revoked")
