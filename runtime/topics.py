"""The topic set: names come from settings; partitions and retention are decided here.

The topics that carry personal data are created with an explicit `retention.ms`
(SIGNATURES_PII_TOPIC_RETENTION); topics that exist already are left as they are (an
operator changes theirs with the cluster's tools, e.g. `kafka-configs --alter`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from runtime.abuse_settings import duration_ms
from runtime.kafka import security_options
from runtime.settings import Settings


@dataclass(frozen=True, slots=True)
class Topics:
    submitted: str
    rejected: str
    accepted: str
    totals: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(
            submitted=settings.topic_submitted,
            rejected=settings.topic_rejected,
            accepted=settings.topic_accepted,
            totals=settings.topic_totals,
        )


def pii_topic_configs(settings: Settings) -> dict[str, str]:
    """The configs of the topics that carry personal data (the submissions, and the dead
    letters that hold them): an explicit retention, SIGNATURES_PII_TOPIC_RETENTION, after
    which the broker deletes them whatever the cluster's default."""
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(duration_ms(settings.pii_topic_retention)),
    }


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic with SIGNATURES_REPLICATION_FACTOR replicas and min.insync.replicas:
    with the producers' acks=all, a write is acknowledged once that many replicas have it,
    and refused (not lost) when fewer are in sync."""
    topics = Topics.from_settings(settings)
    n = settings.partitions
    rf = settings.replication_factor
    durable = {"min.insync.replicas": str(settings.min_isr())}
    pii = {**pii_topic_configs(settings), **durable}
    return [
        NewTopic(topics.submitted, n, rf, topic_configs=pii),
        NewTopic(topics.rejected, n, rf, topic_configs=pii),
        NewTopic(topics.accepted, n, rf, topic_configs=durable),
        # One partition: few keys (one per campaign), and every reader wants them all.
        NewTopic(topics.totals, 1, rf, topic_configs={"cleanup.policy": "compact", **durable}),
    ]


async def ensure_topics(settings: Settings, bootstrap: str) -> None:
    """Create the pipeline's topics; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if missing:
            # Created concurrently by another process: what we wanted.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
