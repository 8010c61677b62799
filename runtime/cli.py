"""The `signatures` command: every entry point, reading the same configuration."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import asyncpg
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ops.erasure_commands import forget, retention_app
from ops.key_commands import keys_app
from ops.review_commands import review_app
from runtime.commands import command_settings as settings
from runtime.commands import run
from runtime.commands import with_pool as _with_pool
from runtime.logs import get_logger
from runtime.pii import KeyProblem
from runtime.settings import ConfigError, Settings

app = typer.Typer(
    name="signatures",
    help="Petition signatures: ingest, validate, deduplicate, persist, count.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
campaign_app = typer.Typer(help="Create, list and close campaigns.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")
dlq_app = typer.Typer(help="Dead letters: list, show, replay.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
partner_app = typer.Typer(help="Partner keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(partner_app, name="partner")
app.add_typer(review_app, name="review")
app.add_typer(retention_app, name="retention")
app.command("forget")(forget)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")
log = get_logger("runtime.cli")
out = Console()

Host = Annotated[str | None, typer.Option(help="Address to listen on [SIGNATURES_API_HOST]")]
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
Port = Annotated[int | None, typer.Option(help="Port to listen on [SIGNATURES_API_PORT]")]


def tune_gc_for_throughput() -> None:
    """For the long-running services, once their imports are done.

    Every batch and request allocates many short-lived objects. With the default
    thresholds the collector runs every 700 allocations and its older generations rescan
    the long-lived state (modules, caches, clients) again and again: measured here, that
    was about 40 % of a persist worker's CPU. Freeze what exists at start, collect rarely.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@app.command()
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


@app.command()
def topics() -> None:
    """Create the pipeline's topics on the configured broker."""
    from runtime.kafka import bootstrap_of
    from runtime.topics import ensure_topics

    s = settings()
    run(lambda: ensure_topics(s, bootstrap_of(s)))
    out.print("topics are in place")


@app.command()
def api(host: Host = None, port: Port = None) -> None:
    """Serve the ingest API (HTTP) on one process; its /metrics on SIGNATURES_METRICS_PORT."""
    import uvicorn

    from ingest.api import create_app
    from ingest.server import raise_open_files_limit, server_config

    s = settings()
    s.require_dedupe_secret()
    app = create_app(s)
    raise_open_files_limit(s)
    config = server_config(
        app, s, host=host or s.api_host, port=port if port is not None else s.api_port
    )
    serve_metrics(s, "api")
    tune_gc_for_throughput()
    uvicorn.Server(config).run()


class Worker(StrEnum):
    PERSIST = "persist"
    COUNT = "count"
    MAIL = "mail"


@app.command()
def worker(
    kind: Annotated[
        Worker,
        typer.Argument(
            help="persist: submissions to Postgres; count: totals; mail: confirmation emails"
        ),
    ],
    drain: Annotated[bool, typer.Option(help="Stop once the topic is drained")] = False,
) -> None:
    """Run one consumer process (scale by running more: they share a consumer group)."""
    from consumers.service import WorkerKind, install_stop_signals, run_worker

    s = settings()
    if kind is Worker.PERSIST:
        s.require_dedupe_secret()
    if kind is Worker.MAIL:
        s.require_mail()
    if kind is not Worker.COUNT:
        s.require_master_keys()  # names, email and postcode are stored encrypted

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_worker(WorkerKind(kind.value), s, stop, drain=drain)

    serve_metrics(s, kind.value)
    tune_gc_for_throughput()
    run(go)


def serve_metrics(s: Settings, worker: str) -> None:
    """/metrics of a worker or the API on its own port, in a thread (SIGNATURES_METRICS_PORT),
    never on the API's public port."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(s.metrics_port, addr=s.metrics_host)
    except OSError as exc:
        raise ConfigError(
            f"SIGNATURES_METRICS_PORT: cannot listen on {s.metrics_host}:{s.metrics_port} "
            f"({exc.strerror})"
        ) from None
    log.info("metrics_listening", worker=worker, host=s.metrics_host, port=server.server_port)


@app.command()
def up(
    host: Host = None,
    port: Port = None,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Persist worker processes")] = 2,
) -> None:
    """Run everything on this machine; Ctrl-C stops it cleanly."""
    from consumers.service import install_stop_signals
    from ingest.seed import SEED_CAMPAIGN, ensure_seed_campaign
    from runtime.supervisor import running_stack

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


@app.command()
def demo(
    count: Annotated[int, typer.Option(min=1, help="Signatures to submit")] = 20_000,
    host: Host = None,
    port: Port = None,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Persist worker processes")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, max=1024, help="HTTP requests in flight")] = 64,
    seed: Annotated[int | None, typer.Option(help="Seed of the generated data")] = None,
) -> None:
    """`up`, then submit COUNT realistic signatures through the API and check the totals."""
    from ingest.demo import run_demo

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


@app.command()
def bench(
    count: Annotated[int, typer.Option(min=100, help="Backlog to drain")] = 200_000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Persist worker processes")] = 2,
    naive_count: Annotated[
        int, typer.Option(min=10, help="Messages for the naive baseline")
    ] = 10_000,
    rate: Annotated[float, typer.Option(min=1, help="Live surge: POSTs per second")] = 2_000,
    seconds: Annotated[float, typer.Option(min=1, help="Live surge: duration")] = 30,
    memory_count: Annotated[
        int, typer.Option(min=0, help="Backlog for the peak-RSS run (0: skip it)")
    ] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the generated data")] = 1,
    confirm_count: Annotated[
        int, typer.Option(min=10, help="Confirmation clicks for the confirm rate")
    ] = 5_000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False,
    micro: Annotated[bool, typer.Option("--micro", help="Only µs per operation")] = False,
) -> None:
    """Measure throughput, latency and memory on this machine, against baselines, in one run.

    The drains and the surge run on a campaign with confirmation off (the raw pipeline);
    one more drain measures a campaign that requires confirmation (every signature stored
    pending), and the confirm rate what one API process sustains. One more drain, without
    encryption at rest, measures what encryption costs."""
    from bench.run import BenchOptions, report, run_bench
    from runtime.progress import progress_bar

    if micro:  # bench/micro.py: the per-operation costs, in this process, no services
        from bench.micro import report_micro, run_micro

        micro_us = run_micro()
        if as_json:
            typer.echo(json.dumps(micro_us))
        else:
            report_micro(micro_us, out if out.is_terminal else Console(width=140))
        return
    s = settings().with_local_secret()
    options = BenchOptions(
        count, workers, min(naive_count, count), rate, seconds, memory_count, seed,
        min(confirm_count, count),
    )  # fmt: skip
    log_dir = s.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    err = Console(stderr=True)
    # data, drain, unencrypted drain, pending drain, confirm rate, naive, COPY, surge, memory
    steps = 10 if memory_count else 9  # two naive baselines

    with progress_bar(err) as bar:
        task = bar.add_task("bench", total=steps)

        def say(step: str) -> None:
            if bar.disable:  # piped: one line per step
                err.print(f"bench: {step}")
            else:
                started = bar.tasks[0].description != "bench"
                bar.update(task, description=f"bench: {step}", advance=1 if started else 0)

        figures = run(lambda: run_bench(s, options, log_dir, say))
        bar.update(task, completed=steps)
    if as_json:
        typer.echo(json.dumps(figures))
    else:
        report(figures, out if out.is_terminal else Console(width=140))
    raise typer.Exit(0 if figures["ok"] else 1)


@app.command("bench-stream")
def bench_stream(
    clients: Annotated[int, typer.Option(min=1, max=20_000, help="Stream clients")] = 1_000,
    rate: Annotated[float, typer.Option(min=1, help="Signatures per second meanwhile")] = 200,
    seconds: Annotated[float, typer.Option(min=1, help="For how long")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False,
) -> None:
    """Live totals to a crowd: N stream clients on one API process while signatures arrive."""
    from dataclasses import asdict

    from bench.data import DataSet
    from bench.fanout import run_fanout
    from bench.run import measure_alone

    s = settings().with_local_secret()
    log_dir = s.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    err = Console(stderr=True)
    err.print(f"bench-stream: {clients:,} clients, {rate:,.0f} signatures/s for {seconds:.0f} s")
    data = DataSet.make(int(rate * seconds), seed=7)
    result = run(
        lambda: measure_alone(s, "stream", run_fanout, data, clients, rate, seconds, log_dir)
    )
    if as_json:
        typer.echo(json.dumps(asdict(result)))
        return
    table = Table(title="bench-stream", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    d = result.delay_ms
    table.add_row("stream clients (connected)", f"{result.clients:,} ({result.connected:,})")
    table.add_row("totals versions published", f"{result.versions_published:,}")
    table.add_row("updates delivered", f"{result.events:,}")
    table.add_row(
        "clients that got the final version",
        f"{result.complete_clients:,} ({result.incomplete_clients:,} incomplete)",
    )
    table.add_row(
        "delay p50 / p95 / p99 / max (ms)",
        f"{d['p50']:,.0f} / {d['p95']:,.0f} / {d['p99']:,.0f} / {d['max']:,.0f}",
    )
    table.add_row("API process CPU while streaming", f"{result.api_cpu_seconds} s")
    table.add_row("API process peak RSS", f"{result.api_peak_rss_mb} MB")
    out.print(table)


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


@app.command()
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


@app.command()
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


@app.command("import")
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


class ExportFormat(StrEnum):
    CSV = "csv"
    PDF = "pdf"


@app.command()
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


@app.command()
def schema() -> None:
    """Print the JSON Schema of a submission, for partners producing to Kafka."""
    from schemas.submission import Submission

    typer.echo(json.dumps(Submission.model_json_schema(), indent=2))


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except KeyProblem as exc:  # a wrong master key, a data key missing: never personal data
        print(f"key error: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except OSError as exc:
        if exc.errno == 111:  # connection refused: say which service
            print(f"cannot connect: {exc.strerror}", file=sys.stderr)  # noqa: T201
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
