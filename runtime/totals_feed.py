"""Reading the compacted totals topic: the latest version of every campaign's totals."""

from __future__ import annotations

from pydantic import ValidationError

from runtime.kafka import read_to_end
from runtime.settings import Settings
from schemas.events import CampaignTotals


def keep_latest(latest: dict[str, CampaignTotals], value: bytes | None) -> CampaignTotals | None:
    """Fold one totals record in; return it if it is newer than what was known."""
    if not value:
        return None
    try:
        totals = CampaignTotals.model_validate_json(value)
    except ValidationError:
        return None
    known = latest.get(totals.campaign)
    if known is not None and known.version >= totals.version:
        return None
    latest[totals.campaign] = totals
    return totals


async def read_published_totals(
    settings: Settings, timeout: float = 10.0
) -> dict[str, CampaignTotals]:
    """Everything on the totals topic up to its current end, highest version per campaign."""
    latest: dict[str, CampaignTotals] = {}
    for record in await read_to_end(settings, settings.topic_totals, timeout):
        keep_latest(latest, record.value)
    return latest
