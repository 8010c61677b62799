"""What our throughput is measured against, on the same data in the same run.

- naive: the classic design: one message → one INSERT and one `UPDATE … count+1` and a
  database commit, in two variants measured in the same run: an offset commit after every
  message (`commit per message`), and aiokafka's auto-commit left on, as a naive consumer
  written today would (`auto-commit`: offsets committed in the background every 5 s, so a
  crash replays up to 5 s of messages). Ratios are given against the faster of the two.
- copy limit: the database's bare limit: the same rows COPYed straight into the same
  indexed table, nothing else.

Both keep writing the names, email and postcode into the plaintext columns that rows from
before encryption at rest still use (schemas/migrations/0009): they are the reference the
ratios have always been measured against, on generated data, in a database dropped after.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from bench.data import DataSet, prepare, produce_backlog
from consumers.validate import decode
from runtime.db import create_pool
from runtime.dedupe import dedupe_key
from runtime.kafka import make_consumer
from runtime.settings import Settings
from schemas.submission import Submission

_NAIVE_INSERT = """
INSERT INTO signatures (submission_id, campaign, email_hash, first_name, last_name, email,
                        country, postcode, consent, language, source, submitted_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT DO NOTHING
RETURNING id
"""
_NAIVE_COUNT = "UPDATE campaign_totals SET total = total + 1 WHERE campaign = $1"
COPY_COLUMNS = (
    "submission_id", "campaign", "email_hash", "first_name", "last_name", "email", "country",
    "postcode", "consent", "language", "source", "submitted_at",
)  # fmt: skip


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def _values(s: Submission, secret: bytes) -> tuple[object, ...]:
    return (
        s.submission_id, s.campaign, dedupe_key(secret, s.email), s.first_name, s.last_name,
        s.email, s.country, s.postcode, s.consent, s.language, s.source, s.submitted_at,
    )  # fmt: skip


COMMIT_PER_MESSAGE = "commit per message"
AUTO_COMMIT = "auto-commit"
NAIVE_DESIGNS = (COMMIT_PER_MESSAGE, AUTO_COMMIT)


def faster_naive(rates: Mapping[str, Rate]) -> tuple[str, Rate]:
    """The naive design to compare against: the faster one, so no ratio is flattered."""
    name = max(rates, key=lambda design: rates[design].per_s)
    return name, rates[name]


async def run_naive(settings: Settings, data: DataSet, count: int, design: str) -> Rate:
    """The naive consumer over the first `count` messages; timed from its first message."""
    if design not in NAIVE_DESIGNS:
        raise ValueError(f"unknown naive design {design!r}")
    commit_each = design == COMMIT_PER_MESSAGE
    sample = data.head(count)
    await prepare(settings)
    await produce_backlog(settings, sample)
    secret = settings.require_dedupe_secret()
    pool = await create_pool(settings.database_url, max_size=1)
    consumer = make_consumer(
        settings,
        settings.persist_group,
        [settings.topic_submitted],
        enable_auto_commit=not commit_each,
    )
    await consumer.start()
    try:
        first = await consumer.getone()  # the group join is not part of the measurement
        started = time.perf_counter()
        record, done = first, 0
        async with pool.acquire() as conn:
            while True:
                outcome = decode(record.value, settings.max_record_bytes)
                if isinstance(outcome, Submission):
                    async with conn.transaction():
                        inserted = await conn.fetchval(_NAIVE_INSERT, *_values(outcome, secret))
                        if inserted is not None:
                            await conn.execute(_NAIVE_COUNT, outcome.campaign)
                if commit_each:
                    await consumer.commit()
                done += 1
                if done >= count:
                    break
                record = await consumer.getone()
        return Rate(done, time.perf_counter() - started)
    finally:
        await consumer.stop()
        await pool.close()


async def run_copy_limit(settings: Settings, data: DataSet, batch: int = 5_000) -> Rate:
    """COPY of the same (valid, deduplicated) rows into the same indexed table."""
    await prepare(settings)
    secret = settings.require_dedupe_secret()
    rows, seen = [], set()
    for message in data.messages:
        outcome = decode(message, settings.max_record_bytes)
        if isinstance(outcome, Submission):
            values = _values(outcome, secret)
            if values[2] not in seen:
                seen.add(values[2])
                rows.append(values)
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            for start in range(0, len(rows), batch):
                await conn.copy_records_to_table(
                    "signatures", records=rows[start : start + batch], columns=COPY_COLUMNS
                )
            seconds = time.perf_counter() - started
        return Rate(len(rows), seconds)
    finally:
        await pool.close()
