"""The benchmark's data set and its isolated environment (database, topics, groups)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass

import asyncpg

from ingest.loadgen import Kind, generate, submission_message
from runtime.campaigns import counted_rows, create_campaign
from runtime.db import apply_migrations, create_pool, ensure_database
from runtime.kafka import make_producer
from runtime.settings import Settings
from runtime.topics import ensure_topics
from schemas.campaign import Confirmation, NewCampaign

CAMPAIGN = NewCampaign(
    slug="bench", title="Benchmark", target="Nobody", goal=200_000, confirmation=Confirmation.OFF
)


@dataclass(frozen=True)
class DataSet:
    messages: list[bytes]  # as records on the input topic
    keys: list[bytes]
    bodies: list[bytes]  # as HTTP request bodies
    kinds: Counter[Kind]
    each: list[Kind]  # the kind of every message, in order

    @classmethod
    def make(cls, count: int, seed: int) -> DataSet:
        items = list(generate(count, seed=seed))
        messages = [submission_message(i.body, campaign=CAMPAIGN.slug, source="web") for i in items]
        keys = [uuid.UUID(str(i.body["submission_id"])).bytes for i in items]
        bodies = [json.dumps(i.body, ensure_ascii=False).encode() for i in items]
        each = [i.kind for i in items]
        return cls(messages, keys, bodies, Counter(each), each)

    def head(self, count: int) -> DataSet:
        each = self.each[:count]
        return DataSet(
            self.messages[:count], self.keys[:count], self.bodies[:count], Counter(each), each
        )

    @property
    def new_signers(self) -> int:
        """How many rows the messages make: neither a repeat of a person nor invalid."""
        return self.kinds[Kind.FIRST]


# The bench's limits: on, and far above what one machine sends (see `isolated`).
GENEROUS: dict[str, object] = {
    "rate_limits": True,
    "rate_limit_client": "1000000/second",
    "rate_limit_key": "1000000/second",
    "rate_limit_campaign": "1000000/second",
    "flags": True,
    "flag_prefix_rate": "100000000/10minutes",
    "flag_domain_rate": "100000000/10minutes",
}


def isolated(settings: Settings, name: str) -> Settings:
    """Settings for one measurement: its own database, topics and consumer groups.

    The rate limits and the silent flags stay on, as in production, so their cost is in
    every figure; but the load comes from one address and a dozen email domains, faster
    than people sign, so their limits are generous (`GENEROUS`): nothing is refused or
    flagged. The report says so.
    """
    run = uuid.uuid4().hex[:8]
    base = settings.database_url.rsplit("/", 1)[0]
    return settings.model_copy(
        update={
            **GENEROUS,
            "database_url": f"{base}/bench_{name}_{run}",
            "topic_submitted": f"bench-{run}.submitted",
            "topic_rejected": f"bench-{run}.rejected",
            "topic_accepted": f"bench-{run}.accepted",
            "topic_totals": f"bench-{run}.totals",
            "persist_group": f"bench-{run}-persist",
            "count_group": f"bench-{run}-count",
        }
    )


async def prepare(settings: Settings, confirmation: Confirmation = Confirmation.OFF) -> None:
    """Create the database, the schema, the campaign and the topics.

    The campaign counts signatures at once (`off`, the raw pipeline) unless told that they
    wait for confirmation by email (`required`).
    """
    await ensure_database(settings.database_url)
    await apply_migrations(settings.database_url)
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        await create_campaign(pool, CAMPAIGN.model_copy(update={"confirmation": confirmation}))
    finally:
        await pool.close()
    await ensure_topics(settings, settings.kafka_bootstrap_servers or "")


async def drop_database(settings: Settings) -> None:
    base, name = settings.database_url.rsplit("/", 1)
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def produce_backlog(settings: Settings, data: DataSet) -> dict[int, int]:
    """Put the whole data set on the input topic; return the end offset per partition."""
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        futures = []
        for key, value in zip(data.keys, data.messages, strict=True):
            futures.append(await producer.send(settings.topic_submitted, value=value, key=key))
        for metadata in await asyncio.gather(*futures):
            ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
    finally:
        await producer.stop()
    return ends


async def campaign_rows(settings: Settings) -> int:
    """COUNT(*) of the bench campaign's counted rows: what its published total must be."""
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        return (await counted_rows(pool))[CAMPAIGN.slug]
    finally:
        await pool.close()
