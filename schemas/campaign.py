"""Campaigns as the CLI and the API see them."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.submission import Slug

DEFAULT_RETAIN_DAYS = 180
MAX_RETAIN_DAYS = 3650


class CampaignStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Confirmation(StrEnum):
    """Whether a new signature counts only once its owner confirms it by email."""

    REQUIRED = "required"  # double opt-in: stored pending, counted when confirmed
    OFF = "off"  # counted at once: for sources that confirmed people themselves


class SignatureState(StrEnum):
    PENDING = "pending"  # waiting for its owner's confirmation; not counted
    CONFIRMED = "confirmed"  # counted in the public totals
    REMOVED = "removed"  # its owner said it was not them: names and email cleared
    UNDELIVERABLE = "undeliverable"  # the confirmation email was refused for good

    @property
    def counted(self) -> bool:
        """Confirmed by its owner. Whether the row counts in public also depends on its
        flag and review: the `counted` column (schemas/migrations/0008_flags.sql) decides."""
        return self is SignatureState.CONFIRMED


class NewCampaign(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    slug: Slug
    title: str = Field(min_length=1, max_length=200)
    target: str = Field(min_length=1, max_length=200)
    goal: int = Field(gt=0, le=1_000_000_000)
    description: str = Field(default="", max_length=20_000)
    confirmation: Confirmation = Confirmation.REQUIRED
    # days its signers' personal data is kept once it is closed (0: anonymised as soon as
    # `signatures retention run` sees it closed); ops/retention.py
    retain_days: int = Field(default=DEFAULT_RETAIN_DAYS, ge=0, le=MAX_RETAIN_DAYS)


class Campaign(NewCampaign):
    status: CampaignStatus
    created_at: datetime
    closed_at: datetime | None = None
    anonymised_at: datetime | None = None  # its signatures' personal data was cleared


class CampaignChanges(BaseModel):
    """What `signatures campaign update` may change; unset fields stay as they are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=200)
    target: str | None = Field(default=None, min_length=1, max_length=200)
    goal: int | None = Field(default=None, gt=0, le=1_000_000_000)
    description: str | None = Field(default=None, max_length=20_000)
    confirmation: Confirmation | None = None
    retain_days: int | None = Field(default=None, ge=0, le=MAX_RETAIN_DAYS)


class NewCampaignUpdate(BaseModel):
    """A dated update of a campaign, shown on its page (newest first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    posted_on: date
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000)


class CampaignUpdate(NewCampaignUpdate):
    id: int
    campaign: Slug
