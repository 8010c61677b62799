"""`signatures forget` and `signatures retention run`, registered by cli/main.py.

Both print and log counts per campaign, never an address, a name or a hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import typer
from pydantic import SecretStr, ValidationError
from pydantic_core import PydanticCustomError
from rich.console import Console

from cli.shared import command_settings as _settings
from cli.shared import run_with_pool
from consumers.service import install_stop_signals
from ops.retention import Anonymised, run_retention
from runtime.abuse_settings import duration_ms
from runtime.db import DedupeKeyMismatch, check_dedupe_key, create_pool
from runtime.erasure import Erasure, erase, person_hash
from runtime.logs import get_logger
from runtime.settings import ConfigError, Settings

log = get_logger("ops.erasure")
out = Console()
retention_app = typer.Typer(
    help="Retention: anonymise closed campaigns past their retention.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object")]


def dedupe_secret(s: Settings) -> bytes:
    """The key the persist workers hash with: SIGNATURES_DEDUPE_SECRET, or the one `up`
    keeps in the state directory. Never a new one: a new key would find nobody."""
    if s.dedupe_secret is None and (s.state_dir / "dedupe-secret").exists():
        local = (s.state_dir / "dedupe-secret").read_text().strip()
        s = s.model_copy(update={"dedupe_secret": SecretStr(local)})
    return s.require_dedupe_secret()


async def forget_person(
    s: Settings, pool: asyncpg.Pool, secret: bytes, address: str, campaign: str | None
) -> Erasure:
    """Check the key against the database's, then forget, in one transaction."""
    await check_dedupe_key(pool, secret)
    email_hash = person_hash(secret, address)
    async with pool.acquire() as conn, conn.transaction():
        if campaign is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM campaigns WHERE slug = $1)", campaign
        ):
            raise _UnknownCampaign(campaign)
        return await erase(conn, email_hash, campaign)


class _UnknownCampaign(Exception):
    pass


def forget(
    email: Annotated[
        str,
        typer.Option(
            "--email",
            help="The person's email address ('-': read it from standard input, so that it "
            "stays out of the shell's history). Never printed nor logged",
        ),
    ],
    campaign: Annotated[
        str | None, typer.Option(help="Only this campaign's slug (default: every campaign)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Forget a person: delete their signatures, confirmation links and queued emails, move
    the totals down, and keep any replay of what they sent before from bringing them back."""
    s = _settings()
    address = sys.stdin.readline().strip() if email == "-" else email
    try:
        secret = dedupe_secret(s)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None

    try:
        erasure = run_with_pool(s, lambda pool: forget_person(s, pool, secret, address, campaign))
    except (ValidationError, PydanticCustomError, ValueError):
        typer.echo("--email: not a valid email address", err=True)  # never the value
        raise typer.Exit(2) from None
    except _UnknownCampaign:
        typer.echo(f"no campaign {campaign}", err=True)
        raise typer.Exit(1) from None
    except DedupeKeyMismatch:
        typer.echo("the dedupe key differs from the one this database was made with", err=True)
        raise typer.Exit(2) from None
    scope = campaign or "all campaigns"
    log.info(
        "forgotten",
        scope=scope,
        signatures=erasure.signatures,
        campaigns=sorted(erasure.by_campaign),
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "scope": scope,
                    "removed": {
                        c: {
                            "signatures": e.signatures,
                            "counted": e.counted,
                            "pending": e.pending,
                            "tokens": e.tokens,
                            "emails": e.emails,
                            "version": erasure.versions.get(c),
                        }
                        for c, e in erasure.by_campaign.items()
                    },
                }
            )
        )
        return
    for c, e in erasure.by_campaign.items():
        out.print(
            f"{c}: removed {e.signatures} signature(s) ({e.counted} counted, {e.pending} "
            f"pending), {e.tokens} confirmation link(s), {e.emails} queued email(s); "
            f"totals version {erasure.versions.get(c)}"
        )
    if not erasure.by_campaign:
        out.print("nothing stored to remove")
    out.print(f"suppression recorded for {scope}: earlier submissions will not be stored again")


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what it would anonymise; change nothing")
    ] = False,
    repeat: Annotated[
        bool,
        typer.Option(
            "--repeat",
            help="Run again every SIGNATURES_RETENTION_INTERVAL until stopped (as under `up`)",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Anonymise every campaign closed for longer than its retention (--retain-days)."""
    s = _settings()
    if repeat:
        from cli.services import serve_metrics

        serve_metrics(s, "retention")
        asyncio.run(_repeat(s, duration_ms(s.retention_interval) / 1000))
        return

    async def go() -> list[Anonymised]:
        pool = await create_pool(s.database_url_for("worker"), max_size=1)
        try:
            return await run_retention(pool, datetime.now(UTC), dry_run=dry_run)
        finally:
            await pool.close()

    done = asyncio.run(go())
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, "campaigns": [a.as_dict() for a in done]}))
        return
    verb = "would anonymise" if dry_run else "anonymised"
    for a in done:
        out.print(
            f"{a.campaign}: {verb} {a.signatures} signature(s), deleting {a.tokens} "
            f"confirmation link(s) and {a.emails} queued email(s)"
        )
    out.print(f"{len(done)} campaign(s) {verb}")


async def _repeat(s: Settings, interval_s: float) -> None:
    """Anonymise what is due now and every `interval_s` after, until SIGTERM or Ctrl-C."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    log.info("retention_started", interval_s=interval_s)
    pool: asyncpg.Pool | None = None
    try:
        while not stop.is_set():
            try:
                pool = pool or await create_pool(s.database_url_for("worker"), max_size=1)
                done = await run_retention(pool, datetime.now(UTC))
                log.info("retention_run", campaigns=len(done))
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                log.warning("retention_failed", error=type(exc).__name__)  # tried again later
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        if pool is not None:
            await pool.close()
