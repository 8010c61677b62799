"""`signatures demo`: the whole pipeline up, a realistic surge through the API, a verdict.

The data: names from many countries and scripts, about 5 % repeat signers (with case and
Unicode variants of their email) and about 1 % invalid submissions, half of them sent
through the API (answered 422) and half straight to Kafka as a partner would (dead-lettered).
The verdict: the published total equals COUNT(*) in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from uuid import UUID

import aiohttp
import asyncpg
from rich.console import Console
from rich.table import Table

from ingest.loadgen import Generated, Kind, generate, submission_message
from ingest.seed import SEED_CAMPAIGN, ensure_seed_campaign
from runtime.campaigns import counted_rows
from runtime.db import create_pool
from runtime.kafka import OutgoingRecord, make_producer, produce_many, read_to_end
from runtime.progress import progress_bar
from runtime.settings import Settings
from runtime.supervisor import running_stack
from runtime.totals_feed import read_published_totals
from schemas.events import DeadLetterHeaders

PARTNER = "demo-partner"


@dataclass
class Outcome:
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    dead_letter_keys: set[bytes] = field(default_factory=set)


async def post_all(url: str, items: list[Generated], concurrency: int, console: Console) -> Outcome:
    outcome = Outcome()
    queue: asyncio.Queue[Generated] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"content-type": "application/json"}
    with progress_bar(console) as progress:
        task = progress.add_task("submitting", total=len(items))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

            async def sender() -> None:
                while not queue.empty():
                    item = queue.get_nowait()
                    body = json.dumps(item.body, ensure_ascii=False).encode()
                    try:
                        async with client.post(url, data=body, headers=headers) as response:
                            answer = await response.json()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        outcome.failed[type(exc).__name__] += 1
                    else:
                        if response.status == 202:
                            outcome.accepted += 1
                        elif response.status == 422:
                            outcome.refused[answer["errors"][0]["reason"]] += 1
                        else:
                            outcome.failed[f"http_{response.status}"] += 1
                    progress.advance(task)

            await asyncio.gather(*(sender() for _ in range(concurrency)))
    return outcome


async def produce_as_partner(
    settings: Settings, items: list[Generated], campaign: str
) -> set[bytes]:
    records: list[OutgoingRecord] = [
        (
            UUID(str(item.body["submission_id"])).bytes,
            submission_message(item.body, campaign=campaign, source=f"partner:{PARTNER}"),
            [],
        )
        for item in items
    ]
    producer = make_producer(settings)
    await producer.start()
    try:
        await produce_many(producer, settings.topic_submitted, records)
    finally:
        await producer.stop()
    return {key for key, _, _ in records if key is not None}


async def dead_letters_for(settings: Settings, keys: set[bytes]) -> Counter[str]:
    """Reasons of the dead letters whose key is one of ours (read from the topic's start)."""
    reasons: Counter[str] = Counter()
    for record in await read_to_end(settings, settings.topic_rejected, timeout=20):
        if record.key in keys:
            reasons[DeadLetterHeaders.from_kafka(list(record.headers)).reason.value] += 1
    return reasons


async def wait_until_drained(
    settings: Settings,
    pool: asyncpg.Pool,
    slug: str,
    expected_rows_and_dupes: int,
    console: Console,
    timeout: float = 300.0,
) -> tuple[int, int, int]:
    """Until every accepted submission is a row or a counted duplicate, and published."""
    deadline = time.monotonic() + timeout
    with console.status("waiting for the workers to drain and the counter to publish"):
        while True:
            row = await pool.fetchrow(
                "SELECT (SELECT count(*) FROM signatures WHERE campaign = $1) AS rows_, "
                "(SELECT count(*) FROM duplicate_submissions WHERE campaign = $1) AS dupes",
                slug,
            )
            assert row is not None  # noqa: S101
            rows, dupes = int(row["rows_"]), int(row["dupes"])
            published = (await read_published_totals(settings)).get(slug)
            published_total = published.total if published else -1
            if rows + dupes >= expected_rows_and_dupes and published_total == rows:
                return rows, dupes, published_total
            if time.monotonic() > deadline:
                return rows, dupes, published_total
            await asyncio.sleep(0.25)


async def run_demo(
    settings: Settings,
    *,
    count: int,
    host: str,
    port: int,
    workers: int,
    concurrency: int,
    seed: int | None,
    console: Console,
) -> bool:
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"starting the pipeline (logs in {log_dir}) …")
    async with running_stack(
        settings, host=host, port=port, persist_workers=workers, log_dir=log_dir
    ) as stack:
        s = stack.settings
        slug = SEED_CAMPAIGN.slug
        pool = await create_pool(s.database_url, max_size=2)
        try:
            await ensure_seed_campaign(pool)
            before = await pool.fetchrow(
                "SELECT (SELECT count(*) FROM signatures WHERE campaign = $1) AS rows_, "
                "(SELECT count(*) FROM duplicate_submissions WHERE campaign = $1) AS dupes",
                slug,
            )
            assert before is not None  # noqa: S101
            console.print(f"pipeline ready: API {stack.api_url}, campaign [bold]{slug}[/]")
            items = list(generate(count, seed=seed))
            invalid = [i for i in items if i.kind is Kind.INVALID]
            via_kafka = invalid[::2]
            kafka_ids = {id(i) for i in via_kafka}
            via_http = [i for i in items if id(i) not in kafka_ids]
            expected_dupes = sum(1 for i in items if i.kind is Kind.DUPLICATE)

            started = time.perf_counter()
            keys = await produce_as_partner(s, via_kafka, slug)
            outcome = await post_all(
                f"{stack.api_url}/v1/campaigns/{slug}/signatures", via_http, concurrency, console
            )
            http_seconds = time.perf_counter() - started
            rows, dupes, published = await wait_until_drained(
                s,
                pool,
                slug,
                int(before["rows_"]) + int(before["dupes"]) + outcome.accepted,
                console,
            )
            elapsed = time.perf_counter() - started
            dead = await dead_letters_for(s, keys)
            count_star = (await counted_rows(pool)).get(slug, 0)
        finally:
            await pool.close()

    new_rows = rows - int(before["rows_"])
    new_dupes = dupes - int(before["dupes"])
    match = published == count_star
    table = Table(title=f"demo: {count:,} submissions to '{slug}'", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("figure", justify="right", no_wrap=True)
    table.add_row("accepted by the API (202)", f"{outcome.accepted:,}")
    table.add_row("new signatures stored", f"{new_rows:,}")
    table.add_row("duplicates counted", f"{new_dupes:,} (generated {expected_dupes:,})")
    for reason, n in sorted(outcome.refused.items()):
        table.add_row(f"  refused (422): {reason}", f"{n:,}")
    for reason, n in sorted(dead.items()):
        table.add_row(f"  dead letter (partner via Kafka): {reason}", f"{n:,}")
    for error, n in sorted(outcome.failed.items()):
        table.add_row(f"[red]failed: {error}[/]", f"{n:,}")
    table.add_row("HTTP phase", f"{http_seconds:.1f} s, {len(via_http) / http_seconds:,.0f}/s")
    table.add_row(
        "end to end (submit → stored → published)",
        f"{elapsed:.1f} s, {count / elapsed:,.0f}/s",
    )
    table.add_row("published total / COUNT(*)", f"{published:,} / {count_star:,}")
    table.add_row("totals match", "[bold green]yes[/]" if match else "[bold red]NO[/]")
    console.print(table)
    return match and not outcome.failed and sum(dead.values()) == len(via_kafka)
