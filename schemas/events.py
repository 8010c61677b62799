"""Messages the pipeline publishes. None of them carries a name, an email or a postcode."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from schemas.campaign import SignatureState
from schemas.reasons import Reason
from schemas.submission import Slug, Source


class AcceptedEvent(BaseModel):
    """One new signature, on `signatures.accepted` (at least once; dedupe by signature_id).

    `state` is `pending` on a campaign that requires confirmation (the mail worker sends
    the email), `confirmed` where it counts at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", title="AcceptedEvent")

    signature_id: int
    submission_id: UUID
    campaign: Slug
    country: str
    source: Source
    state: SignatureState
    submitted_at: datetime
    accepted_at: datetime
    totals_version: int = Field(
        description="A version of the campaign's totals as of the signature's storing"
    )


class CampaignTotals(BaseModel):
    """The public totals of one campaign, on `signatures.totals` (key = slug), over HTTP,
    SSE and on the page: confirmed signatures only, countries with few signatures merged
    into "other", and nothing about sources or partners.

    Readers keep the highest `version` per campaign; older or repeated versions are
    harmless, so publication is at-least-once and order-insensitive. The version moves on
    only when a public number changes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", title="CampaignTotals")

    campaign: Slug
    total: int = Field(ge=0)
    version: int = Field(ge=0)
    goal: int
    status: str
    by_country: dict[str, int]
    updated_at: datetime


class DeadLetterHeaders(BaseModel):
    """Headers of a record on `signatures.rejected`; its value is the original payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: Reason
    detail: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    rejected_at: datetime

    def to_kafka(self) -> list[tuple[str, bytes]]:
        return [
            ("reason", self.reason.value.encode()),
            ("detail", self.detail.encode()),
            ("origin_topic", self.origin_topic.encode()),
            ("origin_partition", str(self.origin_partition).encode()),
            ("origin_offset", str(self.origin_offset).encode()),
            ("rejected_at", self.rejected_at.isoformat().encode()),
        ]

    @classmethod
    def from_kafka(cls, headers: list[tuple[str, bytes]]) -> DeadLetterHeaders:
        values = {key: value.decode() for key, value in headers}
        return cls.model_validate(values)
