"""Reason codes: why a submission was refused at the edge or dead-lettered by a worker."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # The record as a whole
    EMPTY_RECORD = "empty_record"  # null (tombstone) or empty value
    RECORD_TOO_LARGE = "record_too_large"
    INVALID_ENCODING = "invalid_encoding"  # not UTF-8
    MALFORMED_JSON = "malformed_json"  # not JSON, or not a JSON object
    SUBMISSION_ID_REUSED = "submission_id_reused"  # the id of another person or campaign
    # One field
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    DUPLICATE_FIELD = "duplicate_field"  # a key given twice: neither value is trusted
    EMPTY_FIELD = "empty_field"
    FIELD_TOO_LONG = "field_too_long"
    NUL_BYTE = "nul_byte"
    CONTROL_CHARACTERS = "control_characters"
    INVALID_EMAIL = "invalid_email"
    INVALID_COUNTRY = "invalid_country"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_FIELD = "invalid_field"  # wrong type or format
    # Against the database
    UNKNOWN_CAMPAIGN = "unknown_campaign"
    CAMPAIGN_CLOSED = "campaign_closed"
