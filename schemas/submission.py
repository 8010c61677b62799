"""The submission: the message on `signatures.submitted`, validated and normalised.

Validation never echoes what was submitted: errors carry a field name and a reason
code (see `schemas.reasons`), never the value, because the value may be an email.
"""

from __future__ import annotations

import functools
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated
from uuid import UUID

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, DOT_ATOM_TEXT_INTL
from email_validator.syntax import validate_email_domain_name, validate_email_local_part
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from schemas.countries import ISO_3166_ALPHA2
from schemas.flags import CLIENT_HASH_PATTERN, EdgeFlag, canonical_prefix
from schemas.reasons import Reason

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
SOURCE_PATTERN = r"^(web|partner:[a-z0-9][a-z0-9-]{0,62}|import:[a-z0-9][a-z0-9-]{0,62})$"
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$"
POSTCODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 -]{0,15}$"
NAME_MAX = 100
EMAIL_MAX = 254
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=5)
_EARLIEST_S = EARLIEST.timestamp()
_CLOCK_SKEW_S = CLOCK_SKEW.total_seconds()

# C0/C1 controls, zero-width space, BOM, line/paragraph separators and bidi overrides.
# ZWNJ/ZWJ (U+200C/D) stay allowed: they are part of correct spelling in several scripts.
_FORBIDDEN = re.compile("[\x01-\x1f\x7f-\x9f\u200b\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _fail(reason: Reason, message: str) -> PydanticCustomError:
    return PydanticCustomError(reason.value, message)


def clean_text(value: str, *, max_len: int) -> str:
    """NFC, trimmed, free of control characters, 1..max_len characters."""
    # the common case, printable ASCII, is NFC already and holds no control characters
    ascii_only = value.isascii() and value.isprintable()
    value = value.strip() if ascii_only else clean_unicode(value)
    if not value:
        raise _fail(Reason.EMPTY_FIELD, "must not be empty")
    if len(value) > max_len:
        raise _fail(Reason.FIELD_TOO_LONG, f"must be at most {max_len} characters")
    return value


def clean_unicode(value: str) -> str:
    """NFC and trimmed, or refused if it holds a NUL, control or invisible character."""
    if "\x00" in value:
        raise _fail(Reason.NUL_BYTE, "contains a NUL byte")
    value = unicodedata.normalize("NFC", value).strip()
    if _FORBIDDEN.search(value):
        raise _fail(Reason.CONTROL_CHARACTERS, "contains control or invisible characters")
    return value


# The common case, an unquoted local part, is decided here: with a regex when it is ASCII,
# with the library's own check of a local part when it is not, and a per-domain cache
# (internationalised domains included); everything else goes through email-validator
# whole. The two agree exactly (tests/test_email_fast_path.py checks it
# against the library).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_ASCII_DOMAIN = re.compile(r"[A-Za-z0-9.-]+\Z")
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


@functools.lru_cache(maxsize=65_536)
def _domain(domain: str) -> tuple[str, str] | None:
    """The normalised domain and its IDNA ASCII form if it is valid, else None (slow path)."""
    if domain.isascii() and not _ASCII_DOMAIN.match(domain):
        return None
    try:
        info = validate_email_domain_name(domain, test_environment=False, globally_deliverable=True)
    except EmailNotValidError:
        return None
    return info["domain"], info["ascii_domain"]


def _unicode_local(local: str) -> str | None:
    """The library's form of an unquoted internationalised local part, or None (slow path)."""
    if not DOT_ATOM_TEXT_INTL.match(local):
        return None
    try:
        normalized = unicodedata.normalize("NFC", local)
        for form in dict.fromkeys((local, normalized)):  # both must pass, as in the library
            info = validate_email_local_part(form, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    result: str = info["local_part"]
    return result


def _fast_normalise(value: str) -> str | None:
    local, at, domain = value.rpartition("@")
    if not at:
        return None
    if local.isascii():
        if len(local) > 64 or not _DOT_ATOM.match(local):
            return None
        if local.lower() in _CASE_INSENSITIVE:
            local = local.lower()
    else:
        unicode_local = _unicode_local(local)
        if unicode_local is None:
            return None
        local = unicode_local
    names = _domain(domain)
    if names is None:
        return None
    normalized = f"{local}@{names[0]}"
    # the library's length limits, in UTF-8 bytes, of the address as given, normalised
    # and in ASCII; past them it raises with its own message, so it decides
    if names[0] == names[1] and value.isascii():  # all ASCII: characters are bytes
        too_long = len(value) > EMAIL_MAX or len(normalized) > EMAIL_MAX
    else:
        forms = (value, normalized, f"{local}@{names[1]}")
        too_long = any(len(form.encode()) > EMAIL_MAX for form in forms)
    return None if too_long else normalized


def normalise_email(value: str) -> str:
    """email-validator's normalised form (no network lookups), as stored and as hashed."""
    if "\x00" in value:
        raise _fail(Reason.NUL_BYTE, "contains a NUL byte")
    value = value.strip()
    if len(value) > EMAIL_MAX:
        raise _fail(Reason.FIELD_TOO_LONG, f"must be at most {EMAIL_MAX} characters")
    fast = _fast_normalise(value)
    if fast is not None:
        return fast
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        raise _fail(Reason.INVALID_EMAIL, "is not a valid email address") from None
    normalized: str = info.normalized
    return normalized


def normalise_country(value: str) -> str:
    code = value.strip().upper()
    if code not in ISO_3166_ALPHA2:
        raise _fail(Reason.INVALID_COUNTRY, "must be an ISO 3166-1 alpha-2 country code")
    return code


def in_utc(value: datetime) -> datetime:
    """The same instant in UTC, if UTC can hold it: 0001-01-01T00:00+01:00 it cannot."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise _fail(Reason.INVALID_TIMESTAMP, "is out of range") from None


def plausible_time(value: datetime) -> datetime:
    """In UTC, if it lies between 2000 and a few minutes from now."""
    value = in_utc(value)
    seconds = value.timestamp()
    if seconds < _EARLIEST_S or seconds > time.time() + _CLOCK_SKEW_S:
        raise _fail(Reason.INVALID_TIMESTAMP, "is not a plausible time")
    return value


Name = Annotated[
    str,
    Strict(),
    AfterValidator(partial(clean_text, max_len=NAME_MAX)),
    Field(json_schema_extra={"minLength": 1, "maxLength": NAME_MAX}),
]
Email = Annotated[
    str,
    Strict(),
    AfterValidator(normalise_email),
    Field(json_schema_extra={"format": "email", "maxLength": EMAIL_MAX}),
]
Country = Annotated[
    str,
    Strict(),
    AfterValidator(normalise_country),
    Field(json_schema_extra={"pattern": "^[A-Za-z]{2}$"}),
]
Timestamp = Annotated[AwareDatetime, AfterValidator(plausible_time)]
Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
Source = Annotated[str, Field(pattern=SOURCE_PATTERN)]


class Submission(BaseModel):
    """One person's signature for one campaign, as it travels on `signatures.submitted`."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Submission")

    submission_id: UUID = Field(description="Producer-chosen idempotency key")
    campaign: Slug
    first_name: Name
    last_name: Name
    email: Email
    country: Country = Field(description="ISO 3166-1 alpha-2")
    postcode: Annotated[str, Field(pattern=POSTCODE_PATTERN)] | None = None
    consent: StrictBool = Field(description="Opt-in to further contact; only true counts")
    language: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] | None = None
    source: Source = Field(description="web, partner:<org> or import:<name>")
    submitted_at: Timestamp
    received_at: Annotated[AwareDatetime, AfterValidator(in_utc)] | None = Field(
        default=None, description="When the ingest API received it (set by the API)"
    )
    # What only the HTTP request shows, set by the ingest API (a client cannot send these
    # over HTTP; partners producing to Kafka leave them out). The persist worker stores the
    # prefix and the hash, never a full address, and holds a flagged signature for review.
    client_prefix: Annotated[str, Strict(), AfterValidator(canonical_prefix)] | None = Field(
        default=None,
        description="The sender's address prefix, IPv4 /24 or IPv6 /48 (set by the API)",
    )
    client_hash: Annotated[str, Field(pattern=CLIENT_HASH_PATTERN)] | None = Field(
        default=None, description="A keyed hash of the sender's full address (set by the API)"
    )
    edge_flag: EdgeFlag | None = Field(
        default=None, description="A silent flag the API raised on the form post (set by the API)"
    )

    def fields(self) -> Fields:
        """Its values in the order of `Fields`, as the persist worker stores them."""
        return (
            self.submission_id,
            self.campaign,
            self.first_name,
            self.last_name,
            self.email,
            self.country,
            self.postcode,
            self.consent,
            self.language,
            self.source,
            self.submitted_at,
            self.received_at,
            self.client_prefix,
            self.client_hash,
            self.edge_flag,
        )


# A valid submission's values, normalised, in this order: submission_id, campaign,
# first_name, last_name, email, country, postcode, consent, language, source,
# submitted_at, received_at, client_prefix, client_hash, edge_flag. What
# `Submission.fields()` and the common-record reader (schemas.common_record) both give.
Fields = tuple[
    UUID,
    str,
    str,
    str,
    str,
    str,
    str | None,
    bool,
    str | None,
    str,
    datetime,
    datetime | None,
    str | None,
    str | None,
    str | None,
]


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    reason: Reason


_PYDANTIC_TO_REASON = {
    "missing": Reason.MISSING_FIELD,
    "extra_forbidden": Reason.UNKNOWN_FIELD,
    "string_too_long": Reason.FIELD_TOO_LONG,
    "string_too_short": Reason.EMPTY_FIELD,
    "timezone_aware": Reason.INVALID_TIMESTAMP,
    "datetime_parsing": Reason.INVALID_TIMESTAMP,
    "datetime_from_date_parsing": Reason.INVALID_TIMESTAMP,
    "datetime_type": Reason.INVALID_TIMESTAMP,
    "datetime_object_invalid": Reason.INVALID_TIMESTAMP,
    "json_invalid": Reason.MALFORMED_JSON,
    "json_type": Reason.MALFORMED_JSON,
    "model_type": Reason.MALFORMED_JSON,
    "model_attributes_type": Reason.MALFORMED_JSON,
}
_SAFE_FIELD = re.compile(r"[a-z_]{1,40}")
_KNOWN_REASONS = {reason.value for reason in Reason}


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Field names and reason codes of a ValidationError, with no submitted value in them.

    Never use `str(exc)`: it contains the input. Unknown field names are shown only when
    they look like field names, since a key, too, could carry personal data.
    """
    errors: list[FieldError] = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        kind = error["type"]
        if kind in _KNOWN_REASONS:
            reason = Reason(kind)
        else:
            reason = _PYDANTIC_TO_REASON.get(kind, Reason.INVALID_FIELD)
        loc = [str(part) for part in error["loc"] if isinstance(part, str)]
        errors.append(FieldError(safe_field_name(loc[0]) if loc else "(record)", reason))
    return errors


def safe_field_name(name: str) -> str:
    """A key as it may be shown: itself if it looks like a field name, else "(unnamed)"."""
    return name if _SAFE_FIELD.fullmatch(name) else "(unnamed)"


def primary_reason(errors: list[FieldError]) -> Reason:
    """The reason code a dead letter is filed under: the record-level one, else the first."""
    for error in errors:
        if error.field == "(record)":
            return error.reason
    return errors[0].reason if errors else Reason.INVALID_FIELD


def describe(errors: list[FieldError]) -> str:
    return "; ".join(f"{error.field}: {error.reason.value}" for error in errors)
