"""The demo and benchmark data: realistic, and exactly as valid or invalid as it says."""

from __future__ import annotations

import unicodedata
from collections import Counter

from consumers.validate import Rejection, decode
from ingest.edge import EdgeRejection, from_json_object
from ingest.loadgen import Kind, generate, submission_message
from schemas.submission import Submission


def scripts_of(text: str) -> set[str]:
    return {unicodedata.name(ch, "?").split()[0] for ch in text if ch.isalpha()}


def test_generated_data_is_what_it_claims() -> None:
    items = list(generate(5_000, seed=3))
    kinds = Counter(item.kind for item in items)
    assert 150 <= kinds[Kind.DUPLICATE] <= 350
    assert 20 <= kinds[Kind.INVALID] <= 90

    first_keys: set[str] = set()
    countries: set[str] = set()
    scripts: set[str] = set()
    for item in items:
        outcome = from_json_object(dict(item.body), campaign="demo", source="web")
        if item.kind is Kind.INVALID:
            assert isinstance(outcome, EdgeRejection)
            assert outcome.errors[0].reason.value == item.invalid_reason
            continue
        assert isinstance(outcome, Submission), item.body.get("country")
        key = outcome.email.casefold()
        if item.kind is Kind.FIRST:
            assert key not in first_keys
            first_keys.add(key)
            countries.add(outcome.country)
            scripts |= scripts_of(outcome.first_name + outcome.last_name)
        else:
            assert key in first_keys  # the same person as someone earlier
    assert len(countries) >= 10
    non_latin = {"CYRILLIC", "GREEK", "CJK", "HIRAGANA", "KATAKANA", "ARABIC", "HEBREW",
                 "DEVANAGARI", "HANGUL"}  # fmt: skip
    assert len(scripts & non_latin) >= 3


def test_partner_records_fail_the_same_way_on_kafka() -> None:
    for item in generate(3_000, seed=5):
        outcome = decode(submission_message(item.body, campaign="demo", source="partner:x"), 16_384)
        if item.kind is Kind.INVALID:
            assert isinstance(outcome, Rejection)
            assert outcome.reason.value == item.invalid_reason
        else:
            assert isinstance(outcome, Submission)


def test_same_seed_same_data_but_the_time() -> None:
    def strip(seed: int) -> list[dict[str, object]]:
        return [
            {k: v for k, v in i.body.items() if k != "submitted_at"}
            for i in generate(50, seed=seed)
        ]

    assert strip(9) == strip(9)
    assert strip(9) != strip(10)
