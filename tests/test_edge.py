"""What the ingest API decides at the edge: pure logic, no services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from ingest.edge import EdgeRejection, from_form, from_json_object
from schemas.submission import Submission

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
FORM = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org", "country": "gb"}


def test_form_checkbox_consent_and_server_assigned_fields() -> None:
    ticked = from_form(
        {**FORM, "consent": "on", "submit": "Sign"}, campaign="c", source="web", now=NOW
    )
    unticked = from_form(FORM, campaign="c", source="web", now=NOW)
    assert isinstance(ticked, Submission) and isinstance(unticked, Submission)
    assert ticked.consent is True and unticked.consent is False
    assert ticked.submitted_at == NOW == ticked.received_at
    assert ticked.submission_id != unticked.submission_id
    assert (ticked.campaign, ticked.source) == ("c", "web")


def test_form_blank_optional_fields_are_absent() -> None:
    s = from_form({**FORM, "postcode": "", "language": ""}, campaign="c", source="web", now=NOW)
    assert isinstance(s, Submission) and s.postcode is None and s.language is None


def test_json_may_bring_its_own_id_and_time_but_not_campaign_or_source() -> None:
    sid = str(uuid.uuid4())
    s = from_json_object(
        {**FORM, "consent": False, "submission_id": sid, "submitted_at": "2026-11-23T11:00:00Z"},
        campaign="c",
        source="web",
        now=NOW,
    )
    assert isinstance(s, Submission)
    assert str(s.submission_id) == sid and s.submitted_at.hour == 11 and s.received_at == NOW
    sneaky = from_json_object(
        {**FORM, "consent": False, "source": "partner:x"}, campaign="c", source="web"
    )
    assert isinstance(sneaky, EdgeRejection)
    assert sneaky.as_json() == {"errors": [{"field": "source", "reason": "unknown_field"}]}


def test_json_consent_must_be_a_boolean() -> None:
    for value in ("yes", 1, "true", None):
        out = from_json_object({**FORM, "consent": value}, campaign="c", source="web")
        assert isinstance(out, EdgeRejection)
        assert out.as_json()["errors"] == [{"field": "consent", "reason": "invalid_field"}]


def test_not_an_object() -> None:
    out = from_json_object([FORM], campaign="c", source="web")
    assert isinstance(out, EdgeRejection)
    assert out.as_json() == {"errors": [{"field": "(record)", "reason": "malformed_json"}]}
