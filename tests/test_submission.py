"""Validation, normalisation and the dedupe key: pure logic, no services."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_core import PydanticCustomError

from consumers.validate import Rejection, decode
from runtime.dedupe import dedupe_key
from schemas.reasons import Reason
from schemas.strict_json import key_ends
from schemas.submission import NAME_MAX, Submission, clean_text, clean_unicode

SECRET = b"k" * 32


def body(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "submission_id": str(uuid.uuid4()),
        "campaign": "cecenia",
        "first_name": "Giulia",
        "last_name": "Rossi",
        "email": "giulia.rossi@example.org",
        "country": "IT",
        "consent": True,
        "source": "web",
        "submitted_at": "2026-01-02T03:04:05+01:00",
    }
    values.update(fields)
    return {k: v for k, v in values.items() if v is not ...}


def raw(**fields: Any) -> bytes:
    return json.dumps(body(**fields), ensure_ascii=False).encode()


def reason_of(value: bytes | None) -> Reason:
    outcome = decode(value, 16_384)
    assert isinstance(outcome, Rejection), outcome
    return outcome.reason


def test_normalises_text_country_and_time() -> None:
    decomposed = unicodedata.normalize("NFD", "  Zoë ")
    s = decode(raw(first_name=decomposed, country=" it", email=" A.B@Example.ORG "), 16_384)
    assert isinstance(s, Submission)
    assert s.first_name == "Zoë" and unicodedata.is_normalized("NFC", s.first_name)
    assert s.country == "IT"
    assert s.email == "A.B@example.org"
    assert s.submitted_at == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("mario.rossi@example.org", "MARIO.ROSSI@EXAMPLE.ORG"),
        ("mario.rossi@example.org", "  Mario.Rossi@Example.org"),
        ("josé@example.org", unicodedata.normalize("NFD", "JOSÉ@example.org")),
        ("ivan@почта.рф", "IVAN@ПОЧТА.РФ"),
        ("ivan@почта.рф", "ivan@xn--80a1acny.xn--p1ai"),
        ("anna@example.org", "anna@ｅｘａｍｐｌｅ.org"),
    ],
)
def test_same_person_same_dedupe_key(one: str, other: str) -> None:
    a, b = decode(raw(email=one), 16_384), decode(raw(email=other), 16_384)
    assert isinstance(a, Submission) and isinstance(b, Submission)
    assert dedupe_key(SECRET, a.email) == dedupe_key(SECRET, b.email)


def test_dedupe_key_is_keyed_and_opaque() -> None:
    key = dedupe_key(SECRET, "mario@example.org")
    assert len(key) == 32
    assert key != dedupe_key(b"x" * 32, "mario@example.org")
    assert key != dedupe_key(SECRET, "maria@example.org")
    assert b"mario" not in key


@given(secret=st.binary(min_size=1, max_size=200), email=st.text(max_size=80))
def test_dedupe_key_is_hmac_sha256(secret: bytes, email: str) -> None:
    expected = hmac.digest(secret, email.casefold().encode(), hashlib.sha256)
    assert dedupe_key(secret, email) == expected


def test_plus_tags_are_different_people() -> None:
    assert dedupe_key(SECRET, "a+x@example.org") != dedupe_key(SECRET, "a@example.org")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.EMPTY_RECORD),
        (b"", Reason.EMPTY_RECORD),
        (b"x" * 20_000, Reason.RECORD_TOO_LARGE),
        (b"\xff\xfe{}", Reason.INVALID_ENCODING),
        (b"{", Reason.MALFORMED_JSON),
        (b"[]", Reason.MALFORMED_JSON),
        (b"null", Reason.MALFORMED_JSON),
        (b'"text"', Reason.MALFORMED_JSON),
        (raw(email=...), Reason.MISSING_FIELD),
        (raw(nickname="x"), Reason.UNKNOWN_FIELD),
        (raw(first_name="   "), Reason.EMPTY_FIELD),
        (raw(last_name="x" * 101), Reason.FIELD_TOO_LONG),
        (raw(first_name="Nu\x00ll"), Reason.NUL_BYTE),
        (raw(first_name="Bell\x07"), Reason.CONTROL_CHARACTERS),
        (raw(first_name="evil\u202eman"), Reason.CONTROL_CHARACTERS),
        (raw(first_name="zero\u200bwidth"), Reason.CONTROL_CHARACTERS),
        (raw(email="no-at-sign.example.org"), Reason.INVALID_EMAIL),
        (raw(email="two words@example.org"), Reason.INVALID_EMAIL),
        (raw(email="Bob <bob@example.org>"), Reason.INVALID_EMAIL),
        (raw(email="bob@example.org\r\nBcc: x@example.org"), Reason.INVALID_EMAIL),
        (raw(email="bob@[127.0.0.1]"), Reason.INVALID_EMAIL),
        (raw(email="bob@host.test"), Reason.INVALID_EMAIL),
        (raw(email='"quoted"@example.org'), Reason.INVALID_EMAIL),
        (raw(country="XX"), Reason.INVALID_COUNTRY),
        (raw(country="ITA"), Reason.INVALID_COUNTRY),
        (raw(consent="yes"), Reason.INVALID_FIELD),
        (raw(consent=1), Reason.INVALID_FIELD),
        (raw(first_name=12), Reason.INVALID_FIELD),
        (raw(submission_id="not-a-uuid"), Reason.INVALID_FIELD),
        (raw(campaign="Not A Slug"), Reason.INVALID_FIELD),
        (raw(source="somewhere"), Reason.INVALID_FIELD),
        (raw(submitted_at="2026-01-02T03:04:05"), Reason.INVALID_TIMESTAMP),
        (raw(submitted_at="1970-01-01T00:00:00Z"), Reason.INVALID_TIMESTAMP),
        (
            raw(submitted_at=(datetime.now(UTC) + timedelta(days=1)).isoformat()),
            Reason.INVALID_TIMESTAMP,
        ),
    ],
)
def test_each_bad_input_has_its_reason(value: bytes | None, reason: Reason) -> None:
    assert reason_of(value) is reason


def test_zero_width_joiner_is_part_of_a_name() -> None:
    # ZWNJ is required spelling in Persian; it must not be refused as "invisible".
    s = decode(raw(first_name="می\u200cخواهم"), 16_384)
    assert isinstance(s, Submission)


def test_rejection_detail_names_fields_never_values() -> None:
    outcome = decode(raw(email="secret.person@", first_name="Secretname\x07", nosy_key="v"), 16_384)
    assert isinstance(outcome, Rejection)
    assert "secret" not in outcome.detail.lower()
    assert "email: invalid_email" in outcome.detail
    assert "first_name: control_characters" in outcome.detail


def test_unknown_field_name_that_looks_like_data_is_not_echoed() -> None:
    outcome = decode(raw(**{"someone@example.org": 1}), 16_384)
    assert isinstance(outcome, Rejection)
    assert "someone" not in outcome.detail
    assert outcome.reason is Reason.UNKNOWN_FIELD


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises(value: bytes) -> None:
    assert isinstance(decode(value, 16_384), Submission | Rejection)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(list(body())),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=40)
        | st.floats(allow_nan=True),
    )
)
def test_mistyped_fields_never_raise(fields: dict[str, Any]) -> None:
    outcome = decode(json.dumps(body(**fields)).encode(), 16_384)
    assert isinstance(outcome, Submission | Rejection)


def outcome_of(clean: Any, value: str) -> str:
    try:
        return f"ok {clean(value)!r}"
    except PydanticCustomError as error:
        return f"refused {error.type}"


@given(st.text(max_size=120) | st.text(alphabet=" \t\x00\x1f\x7fAé\u0301\u200b", max_size=8))
def test_ascii_names_take_a_short_path_to_the_same_answer(value: str) -> None:
    def by_the_long_path(text: str) -> str:
        return clean_text(clean_unicode(text), max_len=NAME_MAX)

    assert outcome_of(partial(clean_text, max_len=NAME_MAX), value) == outcome_of(
        by_the_long_path, value
    )


@given(
    st.binary(max_size=300) | st.text(alphabet='"\\: \t\n\r\x0b\x0ca', max_size=40).map(str.encode)
)
def test_key_ends_are_counted_as_the_regex_counts_them(value: bytes) -> None:
    assert key_ends(value) == len(re.findall(rb'"\s*:', value))
