"""`signatures import`: signatures from a CSV or NDJSON file, through the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.shared import command_settings as settings
from cli.shared import run
from cli.shared import with_pool as _with_pool

out = Console()


def import_(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A .csv or .ndjson file")
    ],
    campaign: Annotated[str, typer.Option(help="The campaign every line signs")],
    name: Annotated[
        str | None, typer.Option(help="Source name: import:<name> (default: from the file name)")
    ] = None,
) -> None:
    """Import signatures from a file; refused lines are reported by number, field and reason.

    Importing the same file again stores nobody twice. Exits 1 if any line was refused.
    """
    from ingest.importer import ImportResult, count_lines, import_file, refusal_report
    from runtime.campaigns import campaign_statuses
    from runtime.kafka import make_producer
    from runtime.progress import progress_bar
    from schemas.campaign import CampaignStatus

    s = settings()
    status = run(lambda: _with_pool(s, campaign_statuses)).get(campaign)
    if status is not CampaignStatus.OPEN:
        typer.echo(f"campaign {campaign} is {'closed' if status else 'unknown'}", err=True)
        raise typer.Exit(2)
    lines = count_lines(path) - (0 if path.suffix.lower() in (".ndjson", ".jsonl") else 1)

    async def go() -> ImportResult:
        producer = make_producer(s)
        await producer.start()
        try:
            with progress_bar(out) as bar:
                task = bar.add_task(f"importing {path.name}", total=max(lines, 0))
                return await import_file(
                    producer, s.topic_submitted, path, campaign=campaign, name=name,
                    progress=lambda n: bar.advance(task, n),
                )  # fmt: skip
        finally:
            await producer.stop()

    result = run(go)
    out.print(
        f"{result.lines:,} lines: {result.sent:,} sent to {s.topic_submitted}, "
        f"{len(result.refused):,} refused"
    )
    if result.refused:
        typer.echo(refusal_report(result), err=True, nl=False)
        raise typer.Exit(1)
