"""`signatures export`: a campaign's signatures as CSV, or the document handed over at delivery."""

from __future__ import annotations

import contextlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console

from cli.shared import command_settings as settings
from cli.shared import run
from cli.shared import with_pool as _with_pool


class ExportFormat(StrEnum):
    CSV = "csv"
    PDF = "pdf"


def export(
    campaign: Annotated[str, typer.Option(help="The campaign to export")],
    output: Annotated[Path, typer.Option("--out", help="CSV file to write ('-': stdout)")] = Path(
        "-"
    ),
    for_target: Annotated[
        bool,
        typer.Option(
            "--for-target",
            help="The document handed over at delivery: title, target, goal, counts by "
            "country, then names, country and date; needs --out FILE; prints its SHA-256",
        ),
    ] = False,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="With --for-target: csv or pdf")
    ] = ExportFormat.CSV,
) -> None:
    """The campaign's signatures as CSV for its target: names, country, date; never emails."""
    if for_target:
        _export_for_target(campaign, output, fmt)
        return
    if fmt is not ExportFormat.CSV:
        typer.echo("--format pdf needs --for-target", err=True)
        raise typer.Exit(2)
    from ops.export import count_signatures, export_csv
    from runtime.pii import DataKeys
    from runtime.progress import progress_bar

    s = settings()
    keys = DataKeys(s.require_master_keys())  # the names are stored encrypted
    console = Console(stderr=True)

    async def go(pool: asyncpg.Pool) -> int:
        total = await count_signatures(pool, campaign)
        with contextlib.ExitStack() as stack:
            target = (
                sys.stdout
                if str(output) == "-"
                else stack.enter_context(output.open("w", encoding="utf-8", newline=""))
            )
            with progress_bar(console) as bar:
                task = bar.add_task(f"exporting {campaign}", total=total)
                return await export_csv(
                    pool, campaign, target, keys, progress=lambda n: bar.advance(task, n)
                )

    written = run(lambda: _with_pool(s, go))
    console.print(f"{written:,} signatures of {campaign} exported")


def _export_for_target(campaign: str, output: Path, fmt: ExportFormat) -> None:
    """Write the delivery document; stdout gets its SHA-256 only, stderr one summary line
    (counts, never a name). Refusals are one line and exit 2."""
    from ops.delivery import (
        Anonymised,
        DeliveryFormat,
        OutputError,
        UnknownCampaign,
        export_for_target,
    )
    from ops.delivery_pdf import FontsMissing
    from runtime.pii import DataKeys

    if str(output) == "-":
        typer.echo("--for-target needs --out FILE: stdout carries the file's SHA-256", err=True)
        raise typer.Exit(2)
    s = settings()
    keys = DataKeys(s.require_master_keys())  # the names are stored encrypted

    from runtime.progress import progress_bar

    async def go(pool: asyncpg.Pool) -> tuple[int, str]:
        with progress_bar(Console(stderr=True)) as bar:
            task = bar.add_task(f"writing {campaign} as {fmt.value}", total=None)
            delivery, digest = await export_for_target(
                pool,
                campaign,
                output,
                DeliveryFormat(fmt.value),
                keys,
                public_min_count=s.public_min_count,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        return delivery.total, digest

    try:
        total, digest = run(lambda: _with_pool(s, go))
    except UnknownCampaign:
        typer.echo(f"campaign {campaign} is unknown", err=True)
        raise typer.Exit(2) from None
    except Anonymised:
        typer.echo(
            f"campaign {campaign} was anonymised after its retention: no names remain", err=True
        )
        raise typer.Exit(2) from None
    except (OutputError, FontsMissing) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{digest}  {output}")
    typer.echo(f"{total:,} signatures of {campaign} written as {fmt.value}", err=True)
