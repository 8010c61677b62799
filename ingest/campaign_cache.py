"""What the API knows of campaigns, from memory: a query every few seconds, not per request.

Signing, the petition page, the widget and the totals all ask "is there such a campaign,
and what is it?". Asking PostgreSQL every time would let a flood of page views, or of
made-up slugs, queue on the database pool in front of the signing path. So every campaign
is loaded at once and kept for `refresh_s`, and a slug that is not among them is unknown
without a query. A campaign created meanwhile is found by a reload that an unknown slug
may start, at most once per `miss_refresh_s` however many unknown slugs arrive; callers
share one reload. With a snapshot in hand a caller waits for a reload at most
`PATIENCE_S`, then goes on with the snapshot while the reload finishes; if the reload
fails (the database slow or down) the snapshot keeps serving, and only without any
snapshot does the error reach the caller (a 503). So a busy database costs signing a
tenth of a second now and then, never its whole wait. The persist workers check every
campaign exactly, so a stale answer here costs no more than a refusal or a dead letter
around the moment a campaign closes.

A known campaign's updates, and its stored totals before the first published ones, are
kept for as long per campaign (async-lru: one load shared by concurrent callers).
"""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
from async_lru import alru_cache

from runtime.campaigns import list_campaigns, list_updates, read_totals
from runtime.logs import get_logger
from schemas.campaign import Campaign, CampaignStatus, CampaignUpdate
from schemas.events import CampaignTotals

log = get_logger("ingest.campaigns")

# The database busy (no pool connection within its acquire timeout) or out of reach.
UNAVAILABLE = (
    TimeoutError,
    ConnectionError,
    socket.gaierror,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
)
MAX_CAMPAIGNS_CACHED = 4_096  # per-campaign entries; only campaigns that exist get one
PATIENCE_S = 0.1  # a reload takes a few milliseconds when the database is well


class CampaignCache:
    def __init__(
        self,
        pool: asyncpg.Pool,
        refresh_s: float = 2.0,
        miss_refresh_s: float = 0.5,
        *,
        public_min_count: int = 10,
    ) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._miss_refresh_s = miss_refresh_s
        self._public_min_count = public_min_count
        self._campaigns: dict[str, Campaign] = {}
        self._loaded = False
        self._loaded_at = 0.0
        self._reload: asyncio.Task[None] | None = None
        # Per instance, so each cache lives on the event loop of the app that made it.
        cached = alru_cache(maxsize=MAX_CAMPAIGNS_CACHED, ttl=refresh_s)
        self._updates = cached(self._load_updates)
        self._stored = cached(self._load_stored_totals)

    async def get(self, slug: str) -> Campaign | None:
        """The campaign, or None if there is no such campaign."""
        age = time.monotonic() - self._loaded_at
        if age > self._refresh_s or (slug not in self._campaigns and age > self._miss_refresh_s):
            await self._refreshed()
        return self._campaigns.get(slug)

    async def status(self, slug: str) -> CampaignStatus | None:
        campaign = await self.get(slug)
        return campaign.status if campaign is not None else None

    async def updates(self, slug: str) -> list[CampaignUpdate]:
        """The dated updates of a campaign that exists (check with `get` first)."""
        return await self._updates(slug)

    async def stored_totals(self, slug: str) -> CampaignTotals | None:
        """The public totals as stored, for a campaign whose totals were not published yet."""
        return await self._stored(slug)

    async def _refreshed(self) -> None:
        """Start a reload unless one runs, and wait for it: in full for the first snapshot,
        at most PATIENCE_S once there is one."""
        if self._reload is None:
            self._reload = asyncio.create_task(self._load(), name="campaigns-reload")
        if self._loaded:
            await asyncio.wait({self._reload}, timeout=PATIENCE_S)
        else:
            await asyncio.shield(self._reload)

    async def _load(self) -> None:
        try:
            campaigns = await list_campaigns(self._pool)
        except UNAVAILABLE as exc:
            if not self._loaded:
                raise
            log.warning("campaigns_reload_failed", error=type(exc).__name__)
            # keep the snapshot; try again after the short interval
            self._loaded_at = time.monotonic() - self._refresh_s + self._miss_refresh_s
            return
        finally:
            self._reload = None
        self._campaigns = {campaign.slug: campaign for campaign in campaigns}
        self._loaded = True
        self._loaded_at = time.monotonic()

    async def _load_updates(self, slug: str) -> list[CampaignUpdate]:
        return await list_updates(self._pool, slug)

    async def _load_stored_totals(self, slug: str) -> CampaignTotals | None:
        found = await read_totals(self._pool, [slug], min_count=self._public_min_count)
        return found[0] if found else None
