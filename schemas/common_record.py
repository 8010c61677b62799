"""The common submission record, read without the model: the persist worker's hot path.

A partner's or the API's record is nearly always a flat JSON object of plainly formed
values: a hyphenated UUID, RFC 3339 times with seconds, known keys once each. For such a
record this reader gives the same normalised values as `Submission` in about half the
time (orjson, a few anchored patterns, and the model's own validators for names, email,
country and time). Anything else, valid or not, it leaves to the model by answering None:
it decides only what the model would accept, and decides it as the model does.
`tests/test_common_record.py` and every decoding test check it against the model.
"""

from __future__ import annotations

import re
from datetime import datetime

import orjson
from asyncpg.pgproto.pgproto import UUID
from pydantic_core import PydanticCustomError

from schemas.flags import CLIENT_HASH_PATTERN, EDGE_FLAGS, canonical_prefix
from schemas.strict_json import key_ends
from schemas.submission import (
    LANGUAGE_PATTERN,
    NAME_MAX,
    POSTCODE_PATTERN,
    SLUG_PATTERN,
    SOURCE_PATTERN,
    Fields,
    Submission,
    clean_text,
    in_utc,
    normalise_country,
    normalise_email,
    plausible_time,
)


def _whole(pattern: str) -> re.Pattern[str]:
    """The model's `^…$` pattern for `fullmatch`: its `$` (Rust's) never allows a newline."""
    return re.compile(pattern.removeprefix("^").removesuffix("$"))


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HOURS, _MINUTES = r"(?:[01]\d|2[0-3])", r"[0-5]\d"  # fromisoformat allows an offset of +12:60
_TIME = re.compile(
    rf"\d{{4}}-\d\d-\d\dT{_HOURS}:{_MINUTES}:{_MINUTES}(?:\.\d{{1,6}})?(?:Z|[+-]{_HOURS}:{_MINUTES})"
)
_SLUG = _whole(SLUG_PATTERN)
_SOURCE = _whole(SOURCE_PATTERN)
_LANGUAGE = _whole(LANGUAGE_PATTERN)
_POSTCODE = _whole(POSTCODE_PATTERN)
_CLIENT_HASH = _whole(CLIENT_HASH_PATTERN)
_KEYS = frozenset(Submission.model_fields)


def read_common(value: bytes) -> Fields | None:
    """The record's normalised values if it is a common, valid record; else None."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    # Each key once: orjson keeps the last of a repeated key, so count the keys in the
    # text (`"` then `:`); a string value holding that pair only sends it to the model.
    if type(record) is not dict or len(record) != key_ends(value) or not record.keys() <= _KEYS:
        return None
    get = record.get
    sid, campaign, source = get("submission_id"), get("campaign"), get("source")
    first, last, email = get("first_name"), get("last_name"), get("email")
    country, postcode, language = get("country"), get("postcode"), get("language")
    consent, submitted, received = get("consent"), get("submitted_at"), get("received_at")
    prefix, client_hash, edge_flag = get("client_prefix"), get("client_hash"), get("edge_flag")
    if not (
        type(sid) is str
        and _UUID.fullmatch(sid)
        and type(campaign) is str
        and _SLUG.fullmatch(campaign)
        and type(first) is str
        and type(last) is str
        and type(email) is str
        and type(country) is str
        and type(consent) is bool
        and type(source) is str
        and _SOURCE.fullmatch(source)
        and type(submitted) is str
        and _TIME.fullmatch(submitted)
        and (received is None or (type(received) is str and _TIME.fullmatch(received)))
        and (postcode is None or (type(postcode) is str and _POSTCODE.fullmatch(postcode)))
        and (language is None or (type(language) is str and _LANGUAGE.fullmatch(language)))
        and (prefix is None or type(prefix) is str)
        and (
            client_hash is None
            or (type(client_hash) is str and _CLIENT_HASH.fullmatch(client_hash))
        )
        and (edge_flag is None or (type(edge_flag) is str and edge_flag in EDGE_FLAGS))
    ):
        return None
    try:
        return (
            UUID(sid),  # asyncpg's own UUID: parsed in C, a uuid.UUID to everything else
            campaign,
            clean_text(first, max_len=NAME_MAX),
            clean_text(last, max_len=NAME_MAX),
            normalise_email(email),
            normalise_country(country),
            postcode,
            consent,
            language,
            source,
            plausible_time(datetime.fromisoformat(submitted)),
            None if received is None else in_utc(datetime.fromisoformat(received)),
            None if prefix is None else canonical_prefix(prefix),
            client_hash,
            edge_flag,
        )
    except (ValueError, PydanticCustomError):  # out of range, or refused: the model says why
        return None
