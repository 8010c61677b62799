"""`signatures dlq`: dead letters listed, shown (redacted) and replayed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from cli.shared import command_settings as settings
from cli.shared import run
from cli.shared import with_pool as _with_pool

dlq_app = typer.Typer(help="Dead letters: list, show, replay.", no_args_is_help=True)
out = Console()

Reasons = Annotated[
    list[str] | None, typer.Option("--reason", help="Only this reason code (repeatable)")
]
Since = Annotated[
    datetime | None, typer.Option(help="Only dead letters rejected since (ISO time, UTC if naive)")
]
Origin = Annotated[str | None, typer.Option(help="Only dead letters from this input topic")]


def _since(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@dlq_app.command("list")
def dlq_list(
    reason: Reasons = None,
    since: Since = None,
    origin: Origin = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array")] = False,
) -> None:
    """Dead letters by reason, time and origin; never their payloads."""
    from collections import Counter

    from ops.dlq import read_dead_letters, select

    s = settings()
    letters = select(
        run(lambda: read_dead_letters(s)),
        reasons=reason or (),
        since=_since(since),
        origin_topic=origin,
    )
    if as_json:
        typer.echo(json.dumps([d.summary() for d in letters]))
        return
    table = Table("ref", "rejected at", "reason", "origin", "bytes", "detail")
    for d in letters:
        row = d.summary()
        table.add_row(
            row["ref"],
            row["rejected_at"],
            row["reason"],
            row["origin"],
            str(row["bytes"]),
            row["detail"],
        )
    out.print(table)
    counts = Counter(d.headers.reason.value for d in letters)
    out.print(
        f"{len(letters)} dead letters" + "".join(f", {r} {n}" for r, n in sorted(counts.items()))
    )


@dlq_app.command("show")
def dlq_show(
    ref: Annotated[
        str, typer.Argument(help="partition:offset on the dead-letter topic (from `dlq list`)")
    ],
    reveal: Annotated[
        bool, typer.Option(help="Print the payload as received, personal data included")
    ] = False,
) -> None:
    """One dead letter: its headers and its payload, personal fields redacted."""
    from ops.dlq import read_dead_letters, select

    s = settings()
    found = select(run(lambda: read_dead_letters(s)), refs=[ref])
    if not found:
        typer.echo(f"no dead letter {ref} on {s.topic_rejected}", err=True)
        raise typer.Exit(1)
    letter = found[0]
    shown: dict[str, object] = {**letter.summary()}
    if reveal:
        shown["payload"] = (letter.value or b"").decode("utf-8", "backslashreplace")
    else:
        shown.update(letter.redacted())
    typer.echo(json.dumps(shown, indent=2, ensure_ascii=False))


@dlq_app.command("replay")
def dlq_replay(
    reason: Reasons = None,
    since: Since = None,
    origin: Origin = None,
    ref: Annotated[
        list[str] | None, typer.Option("--ref", help="Only this dead letter (repeatable)")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter (no filter)")
    ] = False,
    again: Annotated[bool, typer.Option(help="Also those replayed before")] = False,
) -> None:
    """Send selected dead letters back through validation (e.g. after a rule was fixed).

    Each is replayed once unless --again; a submission already stored is recognised by its
    id, so repeating a replay never counts anyone twice.
    """
    from ops.dlq import ReplayResult, read_dead_letters, replay, select
    from runtime.progress import progress_bar

    if not (reason or since or origin or ref or every):
        typer.echo("choose what to replay: --reason, --since, --origin, --ref or --all", err=True)
        raise typer.Exit(2)
    s = settings()

    async def go(pool: asyncpg.Pool) -> tuple[int, ReplayResult]:
        letters = select(
            await read_dead_letters(s), reasons=reason or (), since=_since(since),
            origin_topic=origin, refs=ref or (),
        )  # fmt: skip
        with progress_bar(out) as bar:
            task = bar.add_task("replaying", total=len(letters))
            result = await replay(s, pool, letters, again=again, progress=lambda: bar.advance(task))
        return len(letters), result

    selected, result = run(lambda: _with_pool(s, go))
    out.print(
        f"{selected} selected: {result.replayed} replayed to {s.topic_submitted}, "
        f"{result.already_replayed} replayed before (use --again), {result.empty} empty"
    )
