"""The common-record reader decides only what the model accepts, and as the model does."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumers.validate import Rejection, decode, decode_fields
from ingest.loadgen import generate, submission_message
from schemas.common_record import read_common
from schemas.submission import Submission
from tests.helpers import submission

MAX_BYTES = 16_384


def agrees_with_the_model(raw: bytes) -> bool:
    """Whether the reader decided `raw`; fails if it decided otherwise than the model."""
    fields = read_common(raw)
    if fields is None:
        return False
    outcome = decode(raw, MAX_BYTES)
    assert isinstance(outcome, Submission), outcome
    expected = outcome.fields()
    assert fields == expected
    for mine, theirs in zip(fields, expected, strict=True):  # same offsets, not only instants
        assert type(mine) is type(theirs) or isinstance(mine, uuid.UUID)
        if isinstance(mine, datetime):
            assert isinstance(theirs, datetime)
            assert mine.utcoffset() == theirs.utcoffset()
    return True


def test_the_realistic_load_is_nearly_all_decided_here_and_as_the_model_decides() -> None:
    decided = valid = 0
    for item in generate(5_000, seed=3):
        raw = submission_message(item.body, campaign="cecenia", source="web")
        valid += isinstance(decode(raw, MAX_BYTES), Submission)
        decided += agrees_with_the_model(raw)
    assert decided >= 0.98 * valid > 0


def test_what_the_worker_stores_is_the_same_either_way() -> None:
    raw = json.dumps({**submission(), "received_at": "2026-03-01T12:00:01.5+01:00"}).encode()
    assert agrees_with_the_model(raw)
    outcome = decode(raw, MAX_BYTES)
    assert isinstance(outcome, Submission)
    assert decode_fields(raw, MAX_BYTES) == outcome.fields()
    refused = decode_fields(b'{"consent": "yes"}', MAX_BYTES)
    assert isinstance(refused, Rejection)


UUIDS = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: f"urn:uuid:{u}"),
    st.from_regex(r"\A[0-9a-fA-F-]{30,40}\Z"),
)
TIMES = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,8})?)?"
        r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?\n?\Z"
    ),
)
TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"])
    | st.sampled_from(" \t\n\x00\u200b\u0301é-'@.+"),
    max_size=12,
)
VARIANTS: dict[str, st.SearchStrategy[object]] = {
    "submission_id": UUIDS,
    "submitted_at": TIMES,
    "received_at": st.none() | TIMES,
    "campaign": st.sampled_from(["cecenia", "Cecenia", "cecenia\n", "-x", "a" * 63, "a" * 64])
    | TEXT,
    "source": st.sampled_from(["web", "partner:x-1", "import:csv", "partner:", "web\n"]) | TEXT,
    "first_name": TEXT | st.sampled_from(["x" * 100, "x" * 101, " Ada ", "e\u0301"]),
    "last_name": TEXT,
    "email": TEXT.map(lambda t: t + "@example.org") | TEXT,
    "country": st.sampled_from(["it", " IT ", "XX", "ITA"]) | TEXT,
    "postcode": st.none() | st.sampled_from(["00100", "SW1A 1AA", "-1", "1" * 17]) | TEXT,
    "language": st.none() | st.sampled_from(["it", "pt-BR", "zh-Hant-TW", "i", "en\n"]) | TEXT,
    "consent": st.sampled_from([True, False, 1, "true", None]),
}


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(VARIANTS)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: VARIANTS[k] for k in keys})
))  # fmt: skip
@example({"submitted_at": "2026-03-01T12:00:00+12:60"})
@example({"submitted_at": "2026-03-01T23:59:60Z"})
@example({"submitted_at": "0001-01-01T00:00:00Z"})
@example({"submitted_at": "0001-01-01T00:00:00+02:20"})
@example({"received_at": "9999-12-31T23:59:59-05:00"})
@example({"campaign": "cecenia\n"})
@example({"submission_id": "0B6C7C2E-5D7A-4A57-9F1E-3C2F1D0A9B8C"})
@example({"received_at": None})
def test_near_valid_records_are_decided_as_the_model_decides(changes: dict[str, object]) -> None:
    agrees_with_the_model(json.dumps({**submission(), **changes}, ensure_ascii=False).encode())


@given(st.sampled_from(sorted(VARIANTS)), st.booleans())
def test_a_missing_or_unknown_key_is_left_to_the_model(field: str, unknown: bool) -> None:
    record = submission()
    if unknown:
        record[field + "_x"] = "x"
    else:
        record.pop(field, None)
    raw = json.dumps(record).encode()
    if unknown or Submission.model_fields[field].is_required():
        assert read_common(raw) is None
    agrees_with_the_model(raw)


def test_a_key_given_twice_is_left_to_the_model() -> None:
    raw = json.dumps(submission()).encode()[:-1] + b', "consent": false}'
    assert read_common(raw) is None
