"""A small run of `signatures bench`, so the benchmark never rots. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = {
    "count", "seconds", "throughput_per_s", "naive_throughput_per_s", "speedup_vs_naive",
    "copy_limit_per_s", "fraction_of_limit", "latency_ms", "peak_rss_mb", "totals_match",
    "cold_seconds", "api_max", "surge", "cpu_seconds_steady", "confirmation", "limits",
    "encryption",
}  # fmt: skip


@pytest.mark.timeout(600)  # nine small measurements, each with its own group joins
def test_bench_smoke_run(database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNATURES_")}
    env.update({"DATABASE_URL": database_url, "SIGNATURES_STATE_DIR": str(tmp_path)})
    # small batches, so that a small backlog still takes many commits: the drain measures
    # from the first commit after every worker joined, and refuses to report without one
    env["SIGNATURES_BATCH_MAX_RECORDS"] = "100"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "--count", "3000", "--naive-count", "200",
         "--rate", "300", "--seconds", "2", "--memory-count", "4000", "--confirm-count", "300",
         "--json"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures.keys() >= KEYS
    assert figures["totals_match"] is True
    assert figures["conserved"] is True
    assert figures["count"] == 3000
    assert figures["memory_count"] == 4000
    assert figures["surge"]["sent"] == 600
    assert figures["surge"]["errors"] == 0
    # measured with the protections on (generous limits): nothing refused, nothing held
    assert figures["limits"]["rate_limits"] is True
    assert figures["limits"]["flags"] is True
    assert set(figures["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert figures["speedup_vs_naive"] > 0
    assert figures["peak_rss_mb"] > 0
    confirmation = figures["confirmation"]
    assert confirmation["confirm_count"] > 250  # the stored signers among the first 300
    assert confirmation["confirm_errors"] == 0  # every click answered `confirmed`
    assert confirmation["pending_drain_per_s"] > 0
    encryption = figures["encryption"]
    assert encryption["unencrypted_drain_per_s"] > 0
    assert encryption["encrypted_vs_unencrypted"] > 0
    assert isinstance(encryption["within_15_percent"], bool)


def test_bench_stream_smoke_run(database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNATURES_")}
    env.update({"DATABASE_URL": database_url, "SIGNATURES_STATE_DIR": str(tmp_path)})
    done = subprocess.run(
        [sys.executable, "-m", "cli", "bench-stream", "--clients", "25", "--rate", "50",
         "--seconds", "2", "--json"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["connected"] == 25
    assert figures["versions_published"] >= 1
    assert figures["complete_clients"] == 25  # every client saw the final total
    assert figures["events"] == 25 * figures["versions_published"]
    assert set(figures["delay_ms"]) == {"p50", "p95", "p99", "max"}
