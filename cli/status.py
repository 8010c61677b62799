"""`signatures status` and `signatures reconcile`: how the pipeline is doing, and drift fixed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated

import asyncpg
import typer
from rich.console import Console

from cli.shared import command_settings as settings
from cli.shared import run
from cli.shared import with_pool as _with_pool

out = Console()


def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object")] = False,
    watch: Annotated[
        float, typer.Option(min=0, help="Refresh every N seconds until Ctrl-C (0: once)")
    ] = 0,
) -> None:
    """Lag per partition, recent rates, dead letters by reason, totals and drift per campaign.

    Exits 1 when a campaign's stored total disagrees with its rows (run `reconcile`).
    """
    from rich.console import Group
    from rich.live import Live

    from ops.status import Status, collect, render

    s = settings()

    async def once(pool: asyncpg.Pool) -> Status:
        return await collect(s, pool)

    if not watch:
        snapshot = run(lambda: _with_pool(s, once))
        if as_json:
            typer.echo(json.dumps(snapshot.to_json()))
        else:
            out.print(*render(snapshot))
        raise typer.Exit(0 if snapshot.healthy else 1)

    async def forever(pool: asyncpg.Pool) -> None:
        previous = None
        live = Live(console=out, auto_refresh=False, transient=False)
        with live if not as_json else contextlib.nullcontext():
            while True:
                snapshot = await collect(s, pool, previous=previous, sample_s=0)
                if as_json:  # one JSON object per line
                    typer.echo(json.dumps(snapshot.to_json()))
                else:
                    live.update(Group(*render(snapshot)), refresh=True)
                previous = snapshot
                await asyncio.sleep(watch)

    with contextlib.suppress(KeyboardInterrupt):
        run(lambda: _with_pool(s, forever))


def reconcile(
    dry_run: Annotated[
        bool, typer.Option(help="Report drift, change nothing (exit 1 if any)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array")] = False,
) -> None:
    """Recount every campaign from its rows; correct drift with a new version and publish it."""
    from ops.reconcile import Correction
    from ops.reconcile import reconcile as recount
    from runtime.progress import progress_bar

    s = settings()

    async def go(pool: asyncpg.Pool) -> list[Correction]:
        total = await pool.fetchval("SELECT count(*) FROM campaign_totals")
        with progress_bar(out) as bar:
            task = bar.add_task("recounting campaigns", total=total)
            return await recount(s, pool, dry_run=dry_run, progress=lambda _c: bar.advance(task))

    corrections = run(lambda: _with_pool(s, go))
    changed = [c for c in corrections if c.changed]
    if as_json:
        typer.echo(json.dumps([
            {"campaign": c.campaign, "changed": c.changed, "version": c.version,
             "total": list(c.total), "duplicates": list(c.duplicates),
             "breakdown": {k: list(v) for k, v in c.breakdown.items()}}
            for c in corrections
        ]))  # fmt: skip
    else:
        verb = "would correct" if dry_run else "corrected"
        for c in changed:
            out.print(
                f"{c.campaign}: {verb} total {c.total[0]:,} → {c.total[1]:,}, duplicates "
                f"{c.duplicates[0]:,} → {c.duplicates[1]:,}, {len(c.breakdown)} breakdown "
                f"entries" + ("" if dry_run else f" (version {c.version}, published)")
            )
        out.print(f"{len(corrections)} campaigns recounted, {len(changed)} with drift")
    raise typer.Exit(1 if dry_run and changed else 0)
