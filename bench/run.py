"""The whole benchmark, in one run on this machine, and its report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from bench.baselines import NAIVE_DESIGNS, Rate, faster_naive, run_copy_limit, run_naive
from bench.confirm import run_confirm
from bench.data import GENEROUS, DataSet, drop_database, isolated
from bench.drain import Outcome, run_drain
from bench.surge import P99_LIMIT_MS, run_surge
from ingest.loadgen import Kind
from runtime.broker import EmbeddedBroker
from runtime.settings import Settings
from schemas.campaign import Confirmation

T = TypeVar("T")


@dataclass(frozen=True)
class BenchOptions:
    count: int = 200_000
    workers: int = 2
    naive_count: int = 10_000
    rate: float = 2_000
    seconds: float = 30
    memory_count: int = 1_000_000
    seed: int = 1
    confirm_count: int = 5_000


@contextlib.asynccontextmanager
async def _broker(settings: Settings) -> AsyncIterator[Settings]:
    if settings.kafka_bootstrap_servers:
        yield settings
        return
    settings.require_plaintext_for_embedded_broker()
    broker = EmbeddedBroker()
    await asyncio.to_thread(broker.start)
    try:
        yield settings.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap})
    finally:
        await asyncio.to_thread(broker.stop)


async def run_bench(
    settings: Settings, options: BenchOptions, log_dir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every measurement of the benchmark; returns the figures as one JSON-able dict."""
    async with _broker(settings) as s:
        size = max(options.count, int(options.rate * options.seconds))
        say(f"generating {size:,} submissions")
        data = DataSet.make(size, options.seed)
        say(f"backlog drain: {options.count:,} waiting, {options.workers} persist workers")
        drain = await _measure(
            s, "drain", run_drain, data.head(options.count), options.workers, log_dir
        )
        say(f"backlog drain without encryption (its cost, measured): {options.count:,}")
        plain = await _measure(
            s, "unencrypted", run_drain, data.head(options.count), options.workers, log_dir,
            600, Confirmation.OFF, False,
        )  # fmt: skip
        say(f"backlog drain on a campaign that requires confirmation: {options.count:,}")
        pending = await _measure(
            s, "pending", run_drain, data.head(options.count), options.workers, log_dir,
            600, Confirmation.REQUIRED,
        )  # fmt: skip
        say(f"confirm rate: {options.confirm_count:,} confirmation clicks, one API process")
        confirm = await _measure(s, "confirm", run_confirm, data, options.confirm_count, log_dir)
        naives = {}
        for design in NAIVE_DESIGNS:
            say(f"naive baseline ({design}): {options.naive_count:,} messages")
            naives[design] = await _measure(
                s, "naive", run_naive, data, options.naive_count, design
            )
        say("COPY limit")
        limit = await _measure(s, "copy", run_copy_limit, data.head(options.count))
        say(f"live surge: {options.rate:,.0f}/s for {options.seconds:.0f} s, then wrk")
        surge, wrk = await _measure(
            s, "surge", run_surge, data, options.rate, options.seconds, log_dir
        )
        memory = None
        if options.memory_count:
            say(f"memory: draining {options.memory_count:,}")
            big = DataSet.make(options.memory_count, options.seed + 1)
            memory = await _measure(s, "memory", run_drain, big, options.workers, log_dir, 1800)
    naive_design, naive = faster_naive(naives)
    best = max((w for w in wrk if w.p99_ms < P99_LIMIT_MS and not w.errors),
               key=lambda w: w.requests_per_s, default=None)  # fmt: skip
    totals_match = (
        drain.totals_match
        and plain.totals_match
        and pending.totals_match
        and confirm.totals_match
        and surge.totals_match
        and (memory is None or memory.totals_match)
    )
    conserved = (
        drain.conserved
        and plain.conserved
        and pending.conserved
        and surge.conserved
        and (memory is None or memory.conserved)
    )
    return {
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "count": drain.count,
        "workers": options.workers,
        "seconds": round(drain.steady_seconds, 3),
        "throughput_per_s": round(drain.steady_per_s),
        "cold_seconds": round(drain.cold_seconds, 3),
        "cold_throughput_per_s": round(drain.count / drain.cold_seconds),
        "first_commit_after_launch_s": round(drain.first_join_seconds, 3),
        "cpu_seconds_steady": drain.cpu_seconds,
        "drain_outcome": _outcome(drain.outcome),
        "expected": {
            "new_signers": data.head(options.count).new_signers,
            "duplicates": data.head(options.count).kinds[Kind.DUPLICATE],
            "invalid": data.head(options.count).kinds[Kind.INVALID],
        },
        "naive_count": naive.count,
        # the faster of the naive designs, which every `speedup` is measured against
        "naive_design": naive_design,
        "naive_throughput_per_s": round(naive.per_s),
        "naive": {design: round(rate.per_s) for design, rate in naives.items()},
        "speedup_vs_naive": round(drain.steady_per_s / naive.per_s, 1),
        "confirmation": {
            "pending_drain_per_s": round(pending.steady_per_s),
            "pending_vs_off": round(pending.steady_per_s / drain.steady_per_s, 3),
            "pending_speedup_vs_naive": round(pending.steady_per_s / naive.per_s, 1),
            "confirm_count": confirm.count,
            "confirm_connections": confirm.connections,
            "confirm_per_s": round(confirm.per_s),
            "confirm_errors": confirm.errors,
            "confirm_latency_ms": _round(confirm.latency_ms),
        },
        # the drains above store names, email and postcode encrypted (AES-GCM, runtime/pii.py);
        # the same drain without encryption, same run, as a ratio to the same naive baseline
        "encryption": {
            "unencrypted_drain_per_s": round(plain.steady_per_s),
            "unencrypted_speedup_vs_naive": round(plain.steady_per_s / naive.per_s, 1),
            "encrypted_speedup_vs_naive": round(drain.steady_per_s / naive.per_s, 1),
            "encrypted_vs_unencrypted": round(drain.steady_per_s / plain.steady_per_s, 3),
            "within_15_percent": drain.steady_per_s >= 0.85 * plain.steady_per_s,
            "cpu_seconds_steady_unencrypted": plain.cpu_seconds,
        },
        **limit_figures(drain.count, drain.steady_per_s, limit),
        "surge": {
            "rate_per_s": surge.rate,
            "seconds": surge.seconds,
            "sent": surge.sent,
            "errors": surge.errors,
            "accepted": surge.accepted,
            "refused": surge.refused,
            "expected_new_signers": data.head(surge.sent).new_signers,
            "outcome": _outcome(surge.outcome),
            "counted": surge.counted,
            "uncounted": surge.uncounted,
            "settle_seconds": round(surge.settle_seconds, 3),
            "rows": surge.rows,
            "published_total": surge.published_total,
            "complete": surge.complete,
            "request_latency_ms": _round(surge.request_ms),
        },
        "latency_ms": _round(surge.counted_ms),
        "api_max": {
            "load": "wrk, 1 thread, on this machine; API process alone (workers stopped)",
            "steps": [vars(w) for w in wrk],
            "best_under_100ms_p99_per_s": best.requests_per_s if best else None,
        },
        "memory_count": memory.count if memory else 0,
        "peak_rss_mb": round(memory.peak_rss_mb if memory else drain.peak_rss_mb, 1),
        "totals_match": totals_match,
        "conserved": conserved,
        # every check held: totals, conservation, and every surge signature counted
        "ok": totals_match and conserved and surge.uncounted == 0,
        # on, with limits far above this load (bench/data.py `GENEROUS`)
        "limits": dict(GENEROUS),
    }


async def _measure(
    settings: Settings, name: str, measure: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """One measurement in its own database and topics; the database is dropped right after."""
    run = isolated(settings, name)
    try:
        return await measure(run, *args)
    finally:
        await drop_database(run)


def limit_figures(messages: int, drain_per_s: float, copy: Rate) -> dict[str, Any]:
    """The database's COPY limit beside the drain, like with like.

    The COPY stores the very rows the drain's backlog of `messages` makes (valid, one per
    person), so its speed is given in that backlog's messages per second, the drain's
    unit: the duplicates and the invalid messages make no row and cost the COPY nothing.
    """
    per_message_s = copy.seconds / messages
    return {
        "copy_rows": copy.count,
        "copy_limit_rows_per_s": round(copy.per_s),
        "copy_limit_per_s": round(1 / per_message_s),
        "fraction_of_limit": round(drain_per_s * per_message_s, 3),
    }


def _outcome(outcome: Outcome) -> dict[str, int]:
    return {
        "stored": outcome.stored,
        "duplicates": outcome.duplicates,
        "dead_lettered": outcome.dead_lettered,
        "dead_letter_records": outcome.dead_letter_records,
    }


def _round(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in values.items()}


def _cpus() -> int:
    return os.cpu_count() or 0


def report(figures: dict[str, Any], console: Console) -> None:
    table = Table(title="signatures bench", show_header=False)
    table.add_column("measure", no_wrap=True)
    table.add_column("figure", justify="right", no_wrap=True)
    surge = figures["surge"]
    c = figures["confirmation"]
    e = figures["encryption"]
    best = figures["api_max"]["best_under_100ms_p99_per_s"] or 0

    def ms(values: dict[str, float]) -> str:
        return " / ".join(f"{v:,.0f}" for v in values.values())

    rows = [
        ("backlog", f"{figures['count']:,} messages, {figures['workers']} persist workers"),
        ("steady-state drain", f"{figures['throughput_per_s']:,}/s ({figures['seconds']} s)"),
        (
            "cold drain (launch → totals match)",
            f"{figures['cold_throughput_per_s']:,}/s ({figures['cold_seconds']} s)",
        ),
        ("first commit after launch", f"{figures['first_commit_after_launch_s']} s"),
        (
            "naive baselines",
            ", ".join(f"{design} {rate:,}/s" for design, rate in figures["naive"].items()),
        ),
        (
            f"speed-up vs naive ({figures['naive_design']}, the faster)",
            f"{figures['speedup_vs_naive']}×",
        ),
        (
            "drain without encryption (its cost)",
            f"{e['unencrypted_drain_per_s']:,}/s ({e['unencrypted_speedup_vs_naive']}× naive; "
            f"encrypted {e['encrypted_speedup_vs_naive']}× naive, "
            f"{e['encrypted_vs_unencrypted']:.0%} of it"
            f"{'' if e['within_15_percent'] else ', MORE THAN 15 % LOST'})",
        ),
        (
            "drain, confirmation required (pending)",
            f"{c['pending_drain_per_s']:,}/s ({c['pending_vs_off']:.0%} of off, "
            f"{c['pending_speedup_vs_naive']}× naive)",
        ),
        (
            f"confirm rate, one API process ({c['confirm_connections']} connections)",
            f"{c['confirm_per_s']:,}/s, {c['confirm_errors']} errors",
        ),
        ("confirm p50 / p95 / p99 / max (ms)", ms(c["confirm_latency_ms"])),
        (
            "COPY limit of the database (the same rows)",
            f"{figures['copy_limit_per_s']:,} messages/s "
            f"({figures['copy_limit_rows_per_s']:,} rows/s)",
        ),
        ("fraction of the limit", f"{figures['fraction_of_limit']:.0%}"),
        (
            "surge",
            f"{surge['rate_per_s']:,.0f}/s for {surge['seconds']:.0f} s, {surge['errors']} errors",
        ),
        (
            "surge: new rows counted (after the last send)",
            f"{surge['counted']:,} of {surge['outcome']['stored']:,} "
            f"({surge['settle_seconds']} s)"
            + (f", {surge['uncounted']:,} UNCOUNTED" if surge["uncounted"] else ""),
        ),
        ("submit → counted p50 / p95 / p99 / max (ms)", ms(figures["latency_ms"])),
        ("request p50 / p95 / p99 / max (ms)", ms(surge["request_latency_ms"])),
        ("API max with p99 < 100 ms (wrk)", f"{best:,.0f}/s"),
        (
            f"peak RSS of a persist worker ({figures['memory_count']:,} backlog)",
            f"{figures['peak_rss_mb']} MB",
        ),
        (
            "CPU seconds in steady state",
            ", ".join(f"{k} {v}" for k, v in figures["cpu_seconds_steady"].items()),
        ),
        (
            "rate limits and silent flags",
            f"on, far above this load: {figures['limits']['rate_limit_client']} per client, "
            f"key and campaign; flags past {figures['limits']['flag_prefix_rate']}",
        ),
        ("published totals equal COUNT(*)", "yes" if figures["totals_match"] else "NO"),
        (
            "rows + duplicates + dead letters = messages",
            "yes" if figures["conserved"] else "NO",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


async def measure_alone(
    settings: Settings, name: str, measure: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """One measurement with its own broker (unless one is configured), database and topics."""
    async with _broker(settings) as s:
        return await _measure(s, name, measure, *args)
