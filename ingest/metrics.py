"""Prometheus metrics of the ingest API. Labels are bounded: reason codes, never values."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SUBMISSIONS = Counter(
    "signatures_ingest_submissions",
    "Submissions answered by the ingest API, by outcome and reason code",
    ["outcome", "reason"],
)
REQUEST_SECONDS = Histogram(
    "signatures_http_request_duration_seconds",
    "HTTP request duration",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PRODUCE_ERRORS = Counter(
    "signatures_ingest_produce_errors",
    "Submissions that could not be handed to Kafka (answered 503)",
    ["error"],
)
