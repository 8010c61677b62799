"""Prometheus metrics move as the pipeline works, with bounded labels and no personal data."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.broker import free_port
from runtime.campaigns import create_campaign
from runtime.settings import Settings, settings_env
from tests.helpers import CAMPAIGN, encode, produce, submission

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_a_persist_worker_exposes_what_it_did(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await create_campaign(pool, CAMPAIGN)
    people = [submission(first_name="Sentinella") for _ in range(50)]
    again = submission(email=people[0]["email"].upper())
    invalid = [submission(country="XX"), submission(email="no")]
    await produce(settings, encode([*people, again, *invalid]))
    port = free_port()
    env = {**os.environ, **settings_env(settings), "SIGNATURES_METRICS_PORT": str(port)}
    log = (tmp_path / "persist.log").open("wb")
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "worker", "persist",
        env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
            async with asyncio.timeout(60):
                while value(found, "signatures_consumer_records_total", worker="persist") < 53:
                    await asyncio.sleep(0.5)
                    try:
                        text = (await client.get("/metrics")).text
                    except httpx.TransportError:
                        continue
                    found = samples(text)
    finally:
        worker.terminate()
        assert await worker.wait() == 0
        log.close()

    persist = {"worker": "persist"}
    assert value(found, "signatures_consumer_outcomes_total", **persist, outcome="inserted") == 50
    assert value(found, "signatures_consumer_outcomes_total", **persist, outcome="duplicates") == 1
    assert value(found, "signatures_dead_letters_total", **persist, reason="invalid_country") == 1
    assert value(found, "signatures_dead_letters_total", **persist, reason="invalid_email") == 1
    assert value(found, "signatures_batch_records_count", **persist) >= 1
    assert value(found, "signatures_batch_duration_seconds_sum", **persist) > 0
    lags = [v for (name, _), v in found.items() if name == "signatures_consumer_lag"]
    assert len(lags) == settings.partitions and not any(lags)
    assert "Sentinella" not in text and people[0]["email"] not in text
