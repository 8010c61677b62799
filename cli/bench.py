"""`signatures bench` and `signatures bench-stream`: measurements on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.shared import command_settings as settings
from cli.shared import run

out = Console()


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
