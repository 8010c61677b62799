"""From a Kafka record to a normalised signature row, or to a reason for dead-lettering."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas.common_record import read_common
from schemas.reasons import Reason
from schemas.strict_json import JsonRefused, key_ends, load_json
from schemas.submission import (
    FieldError,
    Fields,
    Submission,
    describe,
    field_errors,
    primary_reason,
)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str


def decode_fields(value: bytes | None, max_bytes: int) -> Fields | Rejection:
    """A record's normalised values, or why it is refused: `decode`, made faster.

    The common record is read without the model (schemas.common_record), everything else
    by `decode`; both give the same values for every record the reader decides.
    """
    if value and len(value) <= max_bytes and (fields := read_common(value)) is not None:
        return fields
    outcome = decode(value, max_bytes)
    return outcome if isinstance(outcome, Rejection) else outcome.fields()


def decode(value: bytes | None, max_bytes: int) -> Submission | Rejection:
    """Parse and validate one record's value. Never raises on bad input.

    The common record is decided by pydantic's JSON parser in one pass. It already refuses
    a byte order mark, invalid UTF-8, lone surrogates and anything but a flat object of the
    submission's fields; the one thing it lets through that the strict reading refuses is
    a key given twice, so an accepted record with more keys than fields it set is read
    again strictly. Every refusal is read strictly too, for its exact reason. Both
    readings agree on every input (tests/test_bad_input.py checks it).
    """
    if not value:
        return Rejection(Reason.EMPTY_RECORD, "record value is empty or null")
    if len(value) > max_bytes:
        return Rejection(Reason.RECORD_TOO_LARGE, f"record is larger than {max_bytes} bytes")
    try:
        submission = Submission.model_validate_json(value)
    except ValidationError:
        return decode_strictly(value)
    if key_ends(value) != len(submission.model_fields_set):
        return decode_strictly(value)
    return submission


def decode_strictly(value: bytes) -> Submission | Rejection:
    """The strict reading (schemas.strict_json), then validation of the parsed object."""
    try:
        parsed = load_json(value)
    except JsonRefused as refused:
        return _rejection([refused.error])
    if not isinstance(parsed, dict):
        return _rejection([FieldError("(record)", Reason.MALFORMED_JSON)])
    try:
        return Submission.model_validate(parsed)
    except ValidationError as exc:
        return _rejection(field_errors(exc))


def _rejection(errors: list[FieldError]) -> Rejection:
    return Rejection(primary_reason(errors), describe(errors))
