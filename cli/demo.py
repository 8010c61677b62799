"""`signatures demo`: the whole pipeline up, a realistic surge through the API, a verdict.

The data: names from many countries and scripts, about 5 % repeat signers (with case and
Unicode variants of their email) and about 1 % invalid submissions, half of them sent
through the API (answered 422) and half straight to Kafka as a partner would (dead-lettered).
The seed campaign requires confirmation: every new signer gets an email (kept as an .eml
file by the local SMTP server), and about 80 % of them follow its link like a person
would (the page, then its button); the rest stay pending and count nowhere.
The verdict: the published total equals the confirmed rows in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from uuid import UUID

import aiohttp
import asyncpg
from rich.console import Console
from rich.table import Table

from ingest.loadgen import Generated, Kind, generate, submission_message
from ingest.seed import SEED_CAMPAIGN, ensure_seed_campaign
from ops.supervisor import running_stack
from runtime.campaigns import counted_rows
from runtime.db import create_pool
from runtime.kafka import OutgoingRecord, make_producer, produce_many, read_to_end
from runtime.progress import progress_bar
from runtime.settings import Settings
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


_COUNTS = """
SELECT (SELECT count(*) FROM signatures WHERE campaign = $1) AS rows_,
       (SELECT count(*) FROM signatures WHERE campaign = $1 AND state = 'pending') AS pending,
       (SELECT count(*) FROM signatures WHERE campaign = $1 AND state = 'confirmed') AS confirmed,
       (SELECT count(*) FROM duplicate_submissions WHERE campaign = $1) AS dupes
"""


async def counts(pool: asyncpg.Pool, slug: str) -> dict[str, int]:
    row = await pool.fetchrow(_COUNTS, slug)
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return {key: int(value) for key, value in row.items()}


async def wait_until_stored(
    pool: asyncpg.Pool, slug: str, expected_rows_and_dupes: int, console: Console
) -> dict[str, int]:
    """Until every accepted submission is a row or a counted duplicate (5 minutes at most)."""
    deadline = time.monotonic() + 300
    with console.status("waiting for the workers to store every submission"):
        while True:
            now = await counts(pool, slug)
            if now["rows_"] + now["dupes"] >= expected_rows_and_dupes:
                return now
            if time.monotonic() > deadline:
                return now
            await asyncio.sleep(0.25)


_LINK = re.compile(r"https?://\S+/confirm/[a-z0-9-]+\.[A-Za-z0-9_-]{43}")


def confirmation_links(mailbox: Path, seen: set[str]) -> list[str]:
    """The confirmation link of every email in the mailbox not in `seen` (file names)."""
    links = []
    for path in sorted(mailbox.glob("*.eml")):
        if path.name in seen:
            continue
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)  # noqa: S101 - policy.default makes one
        body = message.get_body(preferencelist=("plain",))
        found = _LINK.search(body.get_content() if body is not None else "")
        if found:
            links.append(found[0])
    return links


async def wait_for_emails(
    mailbox: Path, seen: set[str], expected: int, console: Console
) -> list[str]:
    """Until every new pending signer's email has arrived (5 minutes at most)."""
    deadline = time.monotonic() + 300
    with console.status(f"waiting for {expected:,} confirmation emails in {mailbox}"):
        while True:
            arrived = await asyncio.to_thread(lambda: list(mailbox.glob("*.eml")))
            if len([p for p in arrived if p.name not in seen]) >= expected:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    return await asyncio.to_thread(confirmation_links, mailbox, seen)


async def follow_links(links: list[str], concurrency: int, console: Console) -> Counter[str]:
    """Each link as a person follows it: the page (GET), then its button (POST)."""
    outcomes: Counter[str] = Counter()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for link in links:
        queue.put_nowait(link)
    connector = aiohttp.TCPConnector(limit=concurrency)
    with progress_bar(console) as progress:
        task = progress.add_task("confirming", total=len(links))
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        ) as client:

            async def person() -> None:
                while not queue.empty():
                    link = queue.get_nowait()
                    try:
                        async with client.get(link) as page:
                            await page.read()
                            if page.status != 200:
                                outcomes[f"page_{page.status}"] += 1
                                continue
                        async with client.post(
                            link, data={"action": "confirm"}, headers={"accept": "text/html"}
                        ) as answer:
                            await answer.read()
                            outcomes[
                                "confirmed" if answer.status == 200 else f"http_{answer.status}"
                            ] += 1
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        outcomes[type(exc).__name__] += 1
                    finally:
                        progress.advance(task)

            await asyncio.gather(*(person() for _ in range(concurrency)))
    return outcomes


async def wait_until_published(
    settings: Settings, pool: asyncpg.Pool, slug: str, console: Console
) -> tuple[int, int]:
    """The published total and the confirmed rows, once they agree (60 s at most)."""
    deadline = time.monotonic() + 60
    with console.status("waiting for the counter to publish"):
        while True:
            confirmed = (await counts(pool, slug))["confirmed"]
            published = (await read_published_totals(settings)).get(slug)
            total = published.total if published else -1
            if total == confirmed or time.monotonic() > deadline:
                return total, confirmed
            await asyncio.sleep(0.25)


@dataclass
class Summary:
    count: int
    slug: str
    outcome: Outcome
    dead: Counter[str]
    expected_dupes: int
    before: dict[str, int]
    after: dict[str, int]
    mailbox: Path
    emails: int
    chosen: int
    followed: Counter[str]
    http_seconds: float
    via_http: int
    elapsed: float

    def table(self, published: int, count_star: int, match: bool) -> Table:
        before, after, outcome = self.before, self.after, self.outcome
        table = Table(title=f"demo: {self.count:,} submissions to '{self.slug}'", show_header=False)
        table.add_column("what", no_wrap=True)
        table.add_column("figure", justify="right", no_wrap=True)
        table.add_row("accepted by the API (202)", f"{outcome.accepted:,}")
        table.add_row("new signatures stored", f"{after['rows_'] - before['rows_']:,}")
        table.add_row(
            "duplicates counted",
            f"{after['dupes'] - before['dupes']:,} (generated {self.expected_dupes:,})",
        )
        for reason, n in sorted(outcome.refused.items()):
            table.add_row(f"  refused (422): {reason}", f"{n:,}")
        for reason, n in sorted(self.dead.items()):
            table.add_row(f"  dead letter (partner via Kafka): {reason}", f"{n:,}")
        for error, n in sorted(outcome.failed.items()):
            table.add_row(f"[red]failed: {error}[/]", f"{n:,}")
        table.add_row("confirmation emails sent", f"{self.emails:,}")
        table.add_row("links followed (page, then button)", f"{self.chosen:,}")
        for result, n in sorted(self.followed.items()):
            table.add_row(f"  {result}", f"{n:,}")
        table.add_row("confirmed (counted)", f"{after['confirmed'] - before['confirmed']:,}")
        table.add_row("still pending (not counted)", f"{after['pending'] - before['pending']:,}")
        table.add_row(
            "HTTP phase", f"{self.http_seconds:.1f} s, {self.via_http / self.http_seconds:,.0f}/s"
        )
        table.add_row(
            "end to end (submit → email → confirmed → published)", f"{self.elapsed:.1f} s"
        )
        table.add_row("published total / confirmed rows", f"{published:,} / {count_star:,}")
        table.add_row("totals match", "[bold green]yes[/]" if match else "[bold red]NO[/]")
        return table


CONFIRMING_SHARE = 0.8  # of the new signers, those who follow their email's link


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
    # Trusted load: every signature comes from this machine, faster than people sign, so
    # the rate limits and the silent flags would hold it all back.
    settings = settings.model_copy(update={"rate_limits": False, "flags": False})
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    mailbox = settings.state_dir / "mail"
    console.print(
        f"starting the pipeline (logs in {log_dir}); rate limits and silent flags off for "
        "this load from one machine (SIGNATURES_RATE_LIMITS=off, SIGNATURES_FLAGS=off) …"
    )
    async with running_stack(
        settings, host=host, port=port, persist_workers=workers, log_dir=log_dir
    ) as stack:
        s = stack.settings
        slug = SEED_CAMPAIGN.slug
        pool = await create_pool(s.database_url, max_size=2)
        try:
            await ensure_seed_campaign(pool)
            before = await counts(pool, slug)
            seen = {p.name for p in mailbox.glob("*.eml")}
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
            stored = await wait_until_stored(
                pool, slug, before["rows_"] + before["dupes"] + outcome.accepted, console
            )
            new_pending = stored["pending"] - before["pending"]
            links = await wait_for_emails(mailbox, seen, new_pending, console)
            chosen = random.Random(seed).sample(links, round(len(links) * CONFIRMING_SHARE))
            followed = await follow_links(chosen, min(concurrency, 32), console)
            published, confirmed = await wait_until_published(s, pool, slug, console)
            elapsed = time.perf_counter() - started
            after = await counts(pool, slug)
            dead = await dead_letters_for(s, keys)
            count_star = (await counted_rows(pool)).get(slug, 0)
        finally:
            await pool.close()

    match = published == count_star == confirmed
    summary = Summary(
        count, slug, outcome, dead, expected_dupes, before, after, mailbox,
        len(links), len(chosen), followed, http_seconds, len(via_http), elapsed,
    )  # fmt: skip
    console.print(summary.table(published, count_star, match))
    console.print(f"the emails are .eml files in {mailbox}")
    return (
        match
        and not outcome.failed
        and sum(dead.values()) == len(via_kafka)
        and followed["confirmed"] == len(chosen)
    )
