"""Set up and run the whole pipeline: migrate, topics, up, demo, schema."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console

from cli.services import Host, Port
from cli.shared import command_settings as settings
from cli.shared import run
from cli.shared import with_pool as _with_pool

out = Console()


def migrate() -> None:
    """Create the database if needed, apply the schema migrations, and make the users of
    SIGNATURES_{API,WORKER,OPERATOR}_DATABASE_URL login members of their roles."""
    from runtime.db import apply_migrations, ensure_database
    from runtime.roles import Login, LoginRefused, ensure_logins

    s = settings()

    async def go() -> tuple[list[str], list[Login]]:
        await ensure_database(s.database_url)
        applied = await apply_migrations(s.database_url)
        return applied, await ensure_logins(s.database_url, s)

    try:
        applied, logins = run(go)
    except LoginRefused as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    out.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    for login in logins:
        verb = "created" if login.created else "updated"
        out.print(f"{login.service} connects as {login.user} ({verb})")


def topics() -> None:
    """Create the pipeline's topics on the configured broker."""
    from runtime.kafka import bootstrap_of
    from runtime.topics import ensure_topics

    s = settings()
    run(lambda: ensure_topics(s, bootstrap_of(s)))
    out.print("topics are in place")


def up(
    host: Host = None,
    port: Port = None,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Persist worker processes")] = 2,
) -> None:
    """Run everything on this machine; Ctrl-C stops it cleanly."""
    from consumers.service import install_stop_signals
    from ingest.seed import SEED_CAMPAIGN, ensure_seed_campaign
    from ops.supervisor import running_stack

    s = settings().with_local_secret()

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        async with running_stack(
            s, host=host or s.api_host, port=port or s.api_port, persist_workers=workers
        ) as stack:
            await _with_pool(stack.settings, ensure_seed_campaign)
            out.print(
                f"[bold green]ready[/] API on {stack.api_url}"
                + (f" (docs at {stack.api_url}/docs)" if s.docs else "")
                + f", petition page {stack.api_url}/campaigns/{SEED_CAMPAIGN.slug}; Ctrl-C stops"
            )
            if stack.mail_dir is not None:
                out.print(f"confirmation emails are kept as .eml files in {stack.mail_dir}")
            await stop.wait()

    run(go)


def demo(
    count: Annotated[int, typer.Option(min=1, help="Signatures to submit")] = 20_000,
    host: Host = None,
    port: Port = None,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Persist worker processes")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, max=1024, help="HTTP requests in flight")] = 64,
    seed: Annotated[int | None, typer.Option(help="Seed of the generated data")] = None,
) -> None:
    """`up`, then submit COUNT realistic signatures through the API and check the totals."""
    from cli.demo import run_demo

    s = settings().with_local_secret()
    ok = run(
        lambda: run_demo(
            s,
            count=count,
            host=host or s.api_host,
            port=port or s.api_port,
            workers=workers,
            concurrency=concurrency,
            seed=seed,
            console=out,
        )
    )
    raise typer.Exit(0 if ok else 1)


def schema() -> None:
    """Print the JSON Schema of a submission, for partners producing to Kafka."""
    from schemas.submission import Submission

    typer.echo(json.dumps(Submission.model_json_schema(), indent=2))
