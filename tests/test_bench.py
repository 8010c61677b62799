"""`signatures bench`: its smallest run, so the benchmark never rots, and the rules its
figures rest on. No timing is asserted; the counts, the checks, and the relations between
the figures that any honest run satisfies are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from bench.baselines import AUTO_COMMIT, COMMIT_PER_MESSAGE, Rate, faster_naive
from bench.drain import Outcome, dead_letter_origins
from bench.micro import SECTIONS
from bench.run import limit_figures
from bench.surge import SurgeResult
from schemas.events import DeadLetterHeaders
from schemas.reasons import Reason

# The subprocess is given BENCH_SECONDS; pytest a little more, so that a run that is too
# slow ends with the subprocess's own timeout (and its output), never pytest's.
BENCH_SECONDS = 900
STREAM_SECONDS = 300
MICRO_SECONDS = 120
MARGIN = 30

KEYS = {
    "count", "seconds", "throughput_per_s", "naive_throughput_per_s", "speedup_vs_naive",
    "copy_limit_per_s", "copy_limit_rows_per_s", "copy_rows", "fraction_of_limit",
    "latency_ms", "peak_rss_mb", "totals_match", "conserved", "ok", "cold_seconds",
    "cold_throughput_per_s", "api_max", "surge", "cpu_seconds_steady", "confirmation",
    "limits", "encryption", "naive", "naive_design", "drain_outcome", "expected",
    "memory_count",
}  # fmt: skip
PERCENTILES = ["p50", "p95", "p99", "max"]


def _env(database_url: str, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNATURES_")}
    env.update({"DATABASE_URL": database_url, "SIGNATURES_STATE_DIR": str(state)})
    return env


def _cli(args: list[str], env: dict[str, str], seconds: int) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args, "--json"],
        env=env, capture_output=True, text=True, timeout=seconds, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return json.loads(done.stdout)


def _ordered(values: dict[str, float]) -> None:
    """p50 <= p95 <= p99 <= max, every one of them there and not negative."""
    assert list(values) == PERCENTILES
    figures = [values[p] for p in PERCENTILES]
    assert figures == sorted(figures)
    assert figures[0] >= 0


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(BENCH_SECONDS + MARGIN)
def test_bench_smoke_run(database_url: str, tmp_path: Path) -> None:
    env = _env(database_url, tmp_path)
    # small batches, so that a small backlog still takes many commits: the drain measures
    # from the first commit after every worker joined, and refuses to report without one
    env["SIGNATURES_BATCH_MAX_RECORDS"] = "100"
    f = _cli(
        ["bench", "--count", "3000", "--naive-count", "200", "--rate", "300", "--seconds", "2",
         "--memory-count", "4000", "--confirm-count", "300"],
        env, BENCH_SECONDS,
    )  # fmt: skip
    assert f.keys() >= KEYS
    assert f["totals_match"] is True
    assert f["conserved"] is True
    assert f["ok"] is True
    assert f["count"] == 3000
    assert f["memory_count"] == 4000

    # the drain: every message ended where the data set says it must
    ended, expected = f["drain_outcome"], f["expected"]
    assert expected["new_signers"] + expected["duplicates"] + expected["invalid"] == 3000
    assert expected["new_signers"] > 0 and expected["duplicates"] > 0 and expected["invalid"] > 0
    assert ended["stored"] == expected["new_signers"]
    assert ended["duplicates"] == expected["duplicates"]
    assert ended["dead_lettered"] == expected["invalid"]
    assert ended["dead_letter_records"] >= ended["dead_lettered"]
    assert f["seconds"] > 0 and f["cold_seconds"] > f["seconds"]  # steady lies within cold
    assert f["throughput_per_s"] > 0
    cpu = f["cpu_seconds_steady"]
    assert set(cpu) == {"persist workers", "counter", "postgres", "broker"}
    assert cpu["persist workers"] > 0

    # the naive baselines: both measured, the ratios against the faster
    naive = f["naive"]
    assert set(naive) == {COMMIT_PER_MESSAGE, AUTO_COMMIT}
    assert min(naive.values()) > 0
    assert f["naive_count"] == 200
    assert f["naive_design"] == max(naive, key=naive.__getitem__)
    assert f["naive_throughput_per_s"] == max(naive.values())
    assert f["speedup_vs_naive"] == pytest.approx(
        f["throughput_per_s"] / f["naive_throughput_per_s"], rel=0.01, abs=0.1
    )

    # the COPY limit: the very rows the drain stored, in the drain's unit
    assert f["copy_rows"] == ended["stored"]
    assert f["copy_limit_per_s"] == pytest.approx(
        f["copy_limit_rows_per_s"] * 3000 / f["copy_rows"], rel=0.01
    )
    assert f["fraction_of_limit"] == pytest.approx(
        f["throughput_per_s"] / f["copy_limit_per_s"], rel=0.02, abs=0.002
    )

    # the surge: every accepted POST stored, counted, and in the published total
    surge = f["surge"]
    assert surge["sent"] == 600
    assert surge["errors"] == 0
    assert surge["accepted"] + surge["refused"] == 600
    assert surge["accepted"] > 0 and surge["refused"] > 0  # the data set has invalid ones
    s_ended = surge["outcome"]
    assert s_ended["stored"] + s_ended["duplicates"] + s_ended["dead_lettered"] == surge["accepted"]
    assert s_ended["stored"] == surge["expected_new_signers"] > 0
    assert surge["counted"] == s_ended["stored"]
    assert surge["uncounted"] == 0
    assert surge["rows"] == surge["published_total"] == s_ended["stored"]
    assert surge["complete"] is True
    _ordered(f["latency_ms"])
    _ordered(surge["request_latency_ms"])
    assert f["latency_ms"]["p50"] > 0

    # measured with the protections on (generous limits): nothing refused, nothing held
    assert f["limits"]["rate_limits"] is True
    assert f["limits"]["flags"] is True
    assert f["peak_rss_mb"] > 20  # a Python process with its libraries
    steps = f["api_max"]["steps"]
    assert steps and all(s["requests_per_s"] > 0 for s in steps)

    confirmation = f["confirmation"]
    assert confirmation["confirm_count"] > 250  # the stored signers among the first 300
    assert confirmation["confirm_errors"] == 0  # every click answered `confirmed`
    assert confirmation["pending_drain_per_s"] > 0
    _ordered(confirmation["confirm_latency_ms"])
    encryption = f["encryption"]
    assert encryption["unencrypted_drain_per_s"] > 0
    assert encryption["encrypted_vs_unencrypted"] == pytest.approx(
        f["throughput_per_s"] / encryption["unencrypted_drain_per_s"], rel=0.01
    )
    assert encryption["within_15_percent"] is (encryption["encrypted_vs_unencrypted"] >= 0.85)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(STREAM_SECONDS + MARGIN)
def test_bench_stream_smoke_run(database_url: str, tmp_path: Path) -> None:
    f = _cli(
        ["bench-stream", "--clients", "25", "--rate", "50", "--seconds", "2"],
        _env(database_url, tmp_path), STREAM_SECONDS,
    )  # fmt: skip
    assert f["connected"] == 25
    # read from the totals topic, not from what the clients got
    assert f["versions_published"] >= 1
    assert f["final_version"] >= f["versions_published"]
    assert f["rows"] == f["published_total"] > 0
    assert f["complete_clients"] == 25  # every client saw the final total
    assert f["incomplete_clients"] == 0
    assert f["events"] == 25 * f["versions_published"]
    _ordered(f["delay_ms"])


@pytest.mark.timeout(MICRO_SECONDS + MARGIN)
@pytest.mark.slow
def test_bench_micro_gives_every_section(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNATURES_")}
    env["SIGNATURES_STATE_DIR"] = str(tmp_path)
    f = _cli(["bench", "--micro"], env, MICRO_SECONDS)
    assert list(f) == list(SECTIONS)
    for section, (_, (ours, _), (theirs, _)) in SECTIONS.items():
        assert set(f[section]) == {ours, theirs, "inputs"}
        assert f[section]["inputs"] > 1_000
        assert 0 < f[section][ours] < 1_000  # µs per operation
        assert 0 < f[section][theirs] < 1_000


def _dead_letter(offset: int, origin: tuple[str, int, int]) -> ConsumerRecord[bytes, bytes]:
    headers = DeadLetterHeaders(
        reason=Reason.MALFORMED_JSON, detail="x", origin_topic=origin[0],
        origin_partition=origin[1], origin_offset=origin[2], rejected_at="2026-12-03T00:00:00Z",
    ).to_kafka()  # fmt: skip
    return ConsumerRecord(
        "run.rejected", 0, offset, 0, 0, b"k", b"{", None, 1, 1, headers
    )  # fmt: skip


def test_dead_letters_are_counted_once_per_origin() -> None:
    records = [
        _dead_letter(0, ("run.submitted", 0, 7)),
        _dead_letter(1, ("run.submitted", 0, 7)),  # the same message, dead-lettered again
        _dead_letter(2, ("run.submitted", 1, 7)),  # another partition, the same offset
        _dead_letter(3, ("other.submitted", 0, 7)),  # another topic's message
    ]
    assert dead_letter_origins(records, "run.submitted") == {
        ("run.submitted", 0, 7),
        ("run.submitted", 1, 7),
    }


def test_speedup_is_against_the_faster_naive_design() -> None:
    slow, fast = Rate(100, 1.0), Rate(300, 1.0)
    assert faster_naive({COMMIT_PER_MESSAGE: slow, AUTO_COMMIT: fast}) == (AUTO_COMMIT, fast)
    assert faster_naive({COMMIT_PER_MESSAGE: fast, AUTO_COMMIT: slow}) == (
        COMMIT_PER_MESSAGE,
        fast,
    )


def test_the_copy_limit_is_compared_in_the_drains_unit() -> None:
    # 1,000 rows COPYed in 0.5 s, from a backlog of 2,000 messages; the drain: 1,000/s
    limits = limit_figures(messages=2_000, drain_per_s=1_000.0, copy=Rate(1_000, 0.5))
    assert limits == {
        "copy_rows": 1_000,
        "copy_limit_rows_per_s": 2_000,
        "copy_limit_per_s": 4_000,  # the backlog's messages per second at that speed
        "fraction_of_limit": 0.25,
    }


def _surge(stored: int, counted: int, rows: int, published: int, accepted: int) -> SurgeResult:
    return SurgeResult(
        rate=1.0, seconds=1.0, sent=accepted, errors=0, accepted=accepted, refused=0,
        request_ms={}, counted_ms={}, counted=counted,
        outcome=Outcome(stored=stored, duplicates=10, dead_lettered=0, dead_letter_records=0),
        rows=rows, published_total=published, settle_seconds=0.0,
    )  # fmt: skip


def test_a_surge_with_signatures_not_counted_is_incomplete() -> None:
    assert _surge(stored=90, counted=90, rows=90, published=90, accepted=100).complete
    lagging = _surge(stored=90, counted=80, rows=90, published=90, accepted=100)
    assert lagging.uncounted == 10
    assert not lagging.complete
    assert not _surge(stored=90, counted=90, rows=90, published=85, accepted=100).complete
    lost = _surge(stored=90, counted=90, rows=90, published=90, accepted=101)
    assert not lost.conserved
    assert not lost.complete
