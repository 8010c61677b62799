"""What the ingest API can tell at the edge, before anything reaches Kafka.

An HTTP request becomes a `Submission` here: the campaign from the path, the source from
the endpoint, the id and time assigned when absent, the receive time always stamped.
The same validators as the workers run, so what passes here passes there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.reasons import Reason
from schemas.submission import FieldError, Submission, field_errors, safe_field_name

# Fields a signer or a partner may send; campaign and source are not among them.
CLIENT_FIELDS = frozenset(
    {
        "submission_id",
        "first_name",
        "last_name",
        "email",
        "country",
        "postcode",
        "consent",
        "language",
        "submitted_at",
    }
)
# An answer names at most this many unknown fields, then "(more)": a body of thousands of
# made-up keys must not come back as an answer of thousands of names.
MAX_UNKNOWN_NAMED = 3
_CHECKED = frozenset({"on", "true", "yes", "1"})
_UNCHECKED = frozenset({"", "off", "false", "no", "0"})


@dataclass(frozen=True, slots=True)
class EdgeRejection:
    errors: list[FieldError]

    def as_json(self) -> dict[str, Any]:
        return {
            "errors": [{"field": e.field, "reason": e.reason.value} for e in self.errors],
        }


def from_json_object(
    body: Any, *, campaign: str, source: str, now: datetime | None = None
) -> Submission | EdgeRejection:
    """A JSON request body (already parsed) as a Submission, or the field errors."""
    if not isinstance(body, dict):
        return EdgeRejection([FieldError("(record)", Reason.MALFORMED_JSON)])
    unknown = [key for key in body if key not in CLIENT_FIELDS]
    if unknown:
        return EdgeRejection(unknown_fields(unknown))
    return _build(dict(body), campaign=campaign, source=source, now=now)


def unknown_fields(keys: list[str]) -> list[FieldError]:
    """The first few unknown keys, as they may be shown, then "(more)" if there are more."""
    named = list(dict.fromkeys(safe_field_name(key) for key in keys))
    errors = [FieldError(name, Reason.UNKNOWN_FIELD) for name in named[:MAX_UNKNOWN_NAMED]]
    if len(named) > MAX_UNKNOWN_NAMED:
        errors.append(FieldError("(more)", Reason.UNKNOWN_FIELD))
    return errors


def from_form(
    form: dict[str, str], *, campaign: str, source: str, now: datetime | None = None
) -> Submission | EdgeRejection:
    """An HTML form post: strings only; a checkbox is present ("on") or absent."""
    values: dict[str, Any] = {k: v for k, v in form.items() if k in CLIENT_FIELDS}
    for optional in ("postcode", "language", "submission_id", "submitted_at"):
        if values.get(optional) == "":
            del values[optional]
    consent = form.get("consent", "").strip().lower()
    if consent in _CHECKED:
        values["consent"] = True
    elif consent in _UNCHECKED:
        values["consent"] = False
    else:
        return EdgeRejection([FieldError("consent", Reason.INVALID_FIELD)])
    return _build(values, campaign=campaign, source=source, now=now)


def _build(
    values: dict[str, Any], *, campaign: str, source: str, now: datetime | None
) -> Submission | EdgeRejection:
    now = now or datetime.now(UTC)
    values.setdefault("submission_id", uuid.uuid4())
    values.setdefault("submitted_at", now)
    values["campaign"] = campaign
    values["source"] = source
    values["received_at"] = now
    try:
        return Submission.model_validate(values)
    except ValidationError as exc:
        return EdgeRejection(field_errors(exc))
