"""The `signatures keys` commands: generate a master key, show, rotate and encrypt.

Registered on the `signatures` command by cli/main.py. They show versions, fingerprints
and row counts, never key material (but `generate`, whose output is a new key) and never
personal data. The README ("Encryption at rest") gives the rotation procedure.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from cli.shared import command_settings as _settings
from cli.shared import run_with_pool as _run
from ops.keys import Moved, Progress, campaigns, encrypt_plaintext, key_status, reencrypt, rewrap
from runtime.pii import DataKeys, new_master_key
from runtime.progress import progress_bar

keys_app = typer.Typer(
    help="Encryption keys of signers' personal data: generate, status, rotate, encrypt.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

CampaignOption = Annotated[
    str | None, typer.Option("--campaign", help="Only this campaign (default: every one)")
]


@keys_app.command("generate")
def generate() -> None:
    """Print a new master key (32 random bytes, base64) for SIGNATURES_MASTER_KEY."""
    typer.echo(new_master_key())


@keys_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object")] = False,
) -> None:
    """Data key versions per campaign: current or not, the master key that wraps each (its
    fingerprint) and the rows it encrypts; rows still in plaintext. Needs no key."""
    s = _settings()
    found = _run(s, key_status)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "versions": [vars(v) for v in found.versions],
                    "plaintext_rows": found.plaintext_rows,
                }
            )
        )
        return
    table = Table("campaign", "version", "current", "master key", "rows", "created")
    for v in found.versions:
        table.add_row(
            v.campaign,
            str(v.version),
            "yes" if v.current else "",
            v.master_fingerprint,
            f"{v.rows:,}",
            v.created_at,
        )
    out.print(table)
    for campaign, n in sorted(found.plaintext_rows.items()):
        out.print(f"{campaign}: {n:,} rows stored before encryption (`signatures keys encrypt`)")


def _moving(
    run_steps: Callable[[asyncpg.Pool, Callable[[str, int], Progress]], Awaitable[T]],
) -> Callable[[asyncpg.Pool], Awaitable[T]]:
    """A step over the rows with a progress bar per campaign (silent when piped)."""

    async def go(pool: asyncpg.Pool) -> T:
        with progress_bar(err) as bar:

            def start(campaign: str, total: int) -> Progress:
                task = bar.add_task(campaign, total=total)
                return lambda n: bar.advance(task, n)

            return await run_steps(pool, start)

    return go


def _report(done: list[Moved]) -> None:
    for m in done:
        out.print(
            f"{m.campaign}: {m.rows:,} rows now under data key v{m.version}"
            + (f", {m.deleted_versions} old version(s) deleted" if m.deleted_versions else "")
        )


@keys_app.command("rotate")
def rotate(
    campaign: CampaignOption = None,
    reencrypt_rows: Annotated[
        bool,
        typer.Option(
            "--reencrypt",
            help="Also give each campaign a new data key version and move its rows to it, "
            "in batches (safe to interrupt and run again, while the pipeline runs)",
        ),
    ] = False,
    pause_ms: Annotated[
        int, typer.Option(min=0, help="Pause between batches, to leave the database to others")
    ] = 0,
) -> None:
    """Rewrap every data key under SIGNATURES_MASTER_KEY (those wrapped by
    SIGNATURES_PREVIOUS_MASTER_KEY); with --reencrypt, new data keys for the rows too."""
    s = _settings()
    keys = DataKeys(s.require_master_keys())

    async def steps(pool: asyncpg.Pool, start: Callable[[str, int], Progress]) -> list[Moved]:
        rewrapped = await rewrap(pool, keys, campaign)
        out.print(f"{rewrapped} data key(s) rewrapped under master key {keys.keyring.fingerprint}")
        done = []
        if reencrypt_rows:
            for slug in await campaigns(pool, campaign):
                moved = await reencrypt(pool, keys, slug, start=start, pause_s=pause_ms / 1000)
                if moved is not None:
                    done.append(moved)
        return done

    _report(_run(s, _moving(steps)))


@keys_app.command("encrypt")
def encrypt(
    campaign: CampaignOption = None,
    pause_ms: Annotated[
        int, typer.Option(min=0, help="Pause between batches, to leave the database to others")
    ] = 0,
) -> None:
    """Encrypt the rows stored before encryption at rest existed, and empty their plaintext
    (batches; safe to interrupt and run again, while the pipeline runs). `up` runs it."""
    s = _settings()
    keys = DataKeys(s.require_master_keys())

    async def steps(pool: asyncpg.Pool, start: Callable[[str, int], Progress]) -> list[Moved]:
        done = []
        for slug in await campaigns(pool, campaign):
            moved = await encrypt_plaintext(pool, keys, slug, start=start, pause_s=pause_ms / 1000)
            if moved is not None:
                done.append(moved)
        return done

    done = _run(s, _moving(steps))
    _report(done)
    if not done:
        out.print("no row in plaintext")
