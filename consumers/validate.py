"""From a Kafka record to a normalised signature row, or to a reason for dead-lettering."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.reasons import Reason
from schemas.submission import FieldError, Submission, describe, field_errors, primary_reason


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str


def dedupe_key(secret: bytes, normalised_email: str) -> bytes:
    """HMAC-SHA256 of the case-folded normalised email: equal for the same person, opaque."""
    inner, outer = _hmac_pads(secret)
    inner = inner.copy()
    inner.update(normalised_email.casefold().encode("utf-8"))
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


@functools.lru_cache(maxsize=4)
def _hmac_pads(secret: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC (RFC 2104) with its keyed inner and outer states computed once per secret.

    `hmac.digest` sets the key up again on every call: 1.6 µs per address here against
    0.6 µs for two copies of the prepared states. Tests check it equals `hmac.digest`.
    """
    block = hashlib.sha256().block_size
    key = hashlib.sha256(secret).digest() if len(secret) > block else secret
    key = key.ljust(block, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


def decode(value: bytes | None, max_bytes: int) -> Submission | Rejection:
    """Parse and validate one record's value. Never raises on bad input."""
    if not value:
        return Rejection(Reason.EMPTY_RECORD, "record value is empty or null")
    if len(value) > max_bytes:
        return Rejection(Reason.RECORD_TOO_LARGE, f"record is larger than {max_bytes} bytes")
    try:
        return Submission.model_validate_json(value)
    except ValidationError as exc:
        errors = field_errors(exc)
    reason = primary_reason(errors)
    if reason is Reason.MALFORMED_JSON and not _is_utf8(value):
        errors = [FieldError("(record)", Reason.INVALID_ENCODING)]
        reason = Reason.INVALID_ENCODING
    return Rejection(reason, describe(errors))


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
