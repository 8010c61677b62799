"""Prometheus metrics of the workers. Labels are bounded: worker kind, outcome, reason code,
error class, topic and partition; never a value from a submission (no address, no token)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter(
    "signatures_consumer_records", "Records consumed and handled, by worker", ["worker"]
)
OUTCOMES = Counter(
    "signatures_consumer_outcomes",
    "What handled records became: inserted, duplicates, redelivered, dead_lettered, published",
    ["worker", "outcome"],
)
ERASED = Counter(
    "signatures_erased_records",
    "Records of forgotten people dropped by the persist workers (received before their "
    "erasure: a replay, a redelivery, a dead letter replayed), by reason",
    ["reason"],
)
DEAD_LETTERS = Counter(
    "signatures_dead_letters", "Records dead-lettered, by reason code", ["worker", "reason"]
)
BATCH_SIZE = Histogram(
    "signatures_batch_records",
    "Records per handled batch",
    ["worker"],
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000),
)
BATCH_SECONDS = Histogram(
    "signatures_batch_duration_seconds",
    "Time to handle a batch: validate, store, produce (the last attempt)",
    ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RETRIES = Counter(
    "signatures_batch_retries",
    "Batches retried after a transient error, by service and error class",
    ["worker", "service", "error"],
)
LAG = Gauge(
    "signatures_consumer_lag",
    "Records behind the partition's high watermark (from the last fetch)",
    ["worker", "topic", "partition"],
)
TOTALS_DELAY = Histogram(
    "signatures_totals_publish_delay_seconds",
    "From a totals version's database commit to its publication on the totals topic",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EMAILS = Counter(
    "signatures_emails",
    "Confirmation emails by outcome: sent, retry (a transient failure), undeliverable, "
    "gave_up, skipped (no longer pending, campaign closed, or the per-signature limit); "
    "forget_sent and forget_failed: the links answering a request to be forgotten",
    ["outcome"],
)
EMAILS_QUEUED = Counter(
    "signatures_emails_queued",
    "Emails queued by the mail worker, by kind: confirm, reminder (resends are queued by the "
    "persist worker)",
    ["kind"],
)
EMAIL_SECONDS = Histogram(
    "signatures_email_send_seconds",
    "Time to hand one email to the SMTP server, connection included when one was opened",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
