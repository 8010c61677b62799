"""`signatures bench --micro`: the per-operation costs that the performance notes quote.

Each figure is the time of one operation in microseconds, measured with `timeit` over the
same generated records as the benchmark's (the best of `repeat` passes over all of them,
as `timeit` advises: the other passes only add the machine's noise). Every section sets the
code the pipeline runs beside what it replaced, in the same run:

- email: the email fast path (`schemas.submission.normalise_email`) against
  email-validator's `validate_email`, per address;
- hmac: the dedupe key with its keyed pads prepared once (`consumers.validate.dedupe_key`)
  against `hmac.digest`, per address;
- keys: counting a record's keys with `bytes.translate` and `count`
  (`schemas.strict_json.key_ends`) against the regex `"\\s*:`, per record;
- decode: a record to its row's values, through the common-record reader
  (`consumers.validate.decode_fields`) against the model (`decode(...).fields()`), per record;
- encryption: AES-GCM sealing of the four personal fields in one call per row
  (`runtime.pii`) against one call per field, per row.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import timeit
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from email_validator import validate_email
from rich.console import Console
from rich.table import Table

from bench.data import CAMPAIGN, DataSet
from consumers.validate import Rejection, decode, decode_fields
from ingest.loadgen import Kind
from runtime.dedupe import dedupe_key
from runtime.pii import DataKey, serialise
from schemas.strict_json import key_ends
from schemas.submission import Submission, normalise_email

# (section, what it measures) and its two measures: (name, what it is)
SECTIONS: dict[str, tuple[str, tuple[str, str], tuple[str, str]]] = {
    "email": (
        "normalising an address (µs per address)",
        ("fast_path", "email fast path"),
        ("email_validator", "email-validator"),
    ),
    "hmac": (
        "dedupe key, HMAC-SHA256 (µs per address)",
        ("prepared_pads", "keyed pads prepared once"),
        ("hmac_digest", "hmac.digest"),
    ),
    "keys": (
        "counting a record's keys (µs per record)",
        ("translate_count", "bytes.translate + count"),
        ("regex", 'regex "\\s*:'),
    ),
    "decode": (
        "decoding a record to its row (µs per record)",
        ("common_record", "common-record reader"),
        ("model", "the model"),
    ),
    "encryption": (
        "AES-GCM of the personal fields (µs per row)",
        ("per_row", "one call per row"),
        ("per_field", "one call per field"),
    ),
}
_KEY_PAIR = re.compile(rb'"\s*:')


def per_op_us(operation: Callable[[Any], object], inputs: Sequence[Any], repeat: int) -> float:
    """Microseconds per call of `operation`, the best of `repeat` passes over `inputs`."""

    def one_pass() -> None:
        for item in inputs:
            operation(item)

    best = min(timeit.Timer(one_pass).repeat(repeat=repeat, number=1))
    return round(best / len(inputs) * 1e6, 3)


def _model_fields(value: bytes) -> object:
    outcome = decode(value, 1 << 20)
    return outcome if isinstance(outcome, Rejection) else outcome.fields()


def run_micro(count: int = 5_000, repeat: int = 5, seed: int = 1) -> dict[str, dict[str, float]]:
    """Every section's two figures, in µs per operation, over `count` generated records."""
    data = DataSet.make(count, seed)
    records = [m for m, kind in zip(data.messages, data.each, strict=True) if kind != Kind.INVALID]
    valid = [s for s in (decode(m, 1 << 20) for m in records) if isinstance(s, Submission)]
    addresses = [json.loads(m)["email"].strip() for m in records]  # as the model passes it
    normalised = [s.email for s in valid]
    secret = os.urandom(32)
    key = DataKey(1, CAMPAIGN.slug, 1, os.urandom(32))
    rows = [(s.submission_id, s.first_name, s.last_name, s.email, s.postcode) for s in valid]

    def per_row(row: tuple[uuid.UUID, str, str, str, str | None]) -> bytes:
        sid, first, last, email, postcode = row
        return key.seal(serialise(first, last, email, postcode), sid, CAMPAIGN.slug)

    def per_field(row: tuple[uuid.UUID, str, str, str, str | None]) -> list[bytes]:
        sid, *fields = row
        return [key.seal(f.encode(), sid, CAMPAIGN.slug) for f in fields if f is not None]

    measures: dict[str, tuple[Callable[[Any], object], Callable[[Any], object], Sequence[Any]]]
    measures = {
        "email": (
            normalise_email,
            lambda a: validate_email(a, check_deliverability=False),
            addresses,
        ),
        "hmac": (
            lambda e: dedupe_key(secret, e),
            lambda e: hmac.digest(secret, e.casefold().encode(), "sha256"),
            normalised,
        ),
        "keys": (key_ends, lambda v: len(_KEY_PAIR.findall(v)), records),
        "decode": (lambda v: decode_fields(v, 1 << 20), _model_fields, records),
        "encryption": (per_row, per_field, rows),
    }
    figures: dict[str, dict[str, float]] = {}
    for section, (ours, theirs, inputs) in measures.items():
        _, (our_name, _), (their_name, _) = SECTIONS[section]
        figures[section] = {
            our_name: per_op_us(ours, inputs, repeat),
            their_name: per_op_us(theirs, inputs, repeat),
            "inputs": len(inputs),
        }
    return figures


def report_micro(figures: dict[str, dict[str, float]], console: Console) -> None:
    table = Table(title="signatures bench --micro (µs per operation, best of the passes)")
    table.add_column("measure")
    table.add_column("now", justify="right")
    table.add_column("before (replaced)", justify="right")
    table.add_column("inputs", justify="right")
    for section, (title, (ours, our_label), (theirs, their_label)) in SECTIONS.items():
        values = figures[section]
        table.add_row(
            title,
            f"{our_label}: {values[ours]:.2f}",
            f"{their_label}: {values[theirs]:.2f}",
            f"{values['inputs']:,.0f}",
        )
    console.print(table)
