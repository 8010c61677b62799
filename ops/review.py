"""`signatures review`: what the silent flags hold, and an operator's decision about it.

`list` shows the signatures waiting for review by reason, address prefix and email domain
(never an email). `accept` lets flagged signatures count (the confirmed ones at once, the
pending ones once their owners confirm); `invalidate` takes signatures out of the count
for good, flagged or not, counted or not. Both select by campaign and filters, and both
run through the one writer path (runtime/signature_states.py `change_review`), so rows,
totals and a new version change in one transaction, and the counter publishes it. A dry
run does the same work in a transaction it rolls back: it shows exactly what the real
run would do, and changes nothing.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from runtime.db import Queryable
from runtime.signature_states import REVIEWABLE, change_review
from schemas.flags import IPV4_PREFIX, IPV6_PREFIX, Flag, Review


class NoFilter(ValueError):
    """Invalidating a whole campaign is never what an operator means."""


@dataclass(frozen=True)
class Selection:
    campaign: str
    reason: Flag | None = None
    ip_prefix: str | None = None  # a network; the stored /24 or /48 prefixes inside it
    domain: str | None = None
    since: datetime | None = None  # when the signature reached us
    until: datetime | None = None

    @property
    def filtered(self) -> bool:
        return any(
            v is not None
            for v in (self.reason, self.ip_prefix, self.domain, self.since, self.until)
        )

    def where(self, eligible: str) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        conditions, params = ["campaign = $1", f"({eligible})"], [self.campaign]

        def add(sql: str, value: Any) -> None:
            params.append(value)
            conditions.append(sql.format(f"${len(params)}"))

        if self.reason is not None:
            add("flag = {}", self.reason.value)
        if self.ip_prefix is not None:
            add("client_prefix <<= {}::cidr", stored_granularity(self.ip_prefix))
        if self.domain is not None:
            add("email_domain = {}", self.domain.strip().lower().rstrip("."))
        if self.since is not None:
            add("coalesce(received_at, persisted_at) >= {}", self.since)
        if self.until is not None:
            add("coalesce(received_at, persisted_at) < {}", self.until)
        return " AND ".join(conditions), params


def stored_granularity(text: str) -> str:
    """A network as a filter: one narrower than the stored prefixes (an address) widens to
    the prefix that holds it, since no finer address is kept."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    widest = IPV4_PREFIX if network.version == 4 else IPV6_PREFIX
    if network.prefixlen > widest:
        network = network.supernet(new_prefix=widest)
    return str(network)


@dataclass(frozen=True)
class ReviewOutcome:
    campaign: str
    review: Review
    dry_run: bool
    touched: int  # signatures whose review this records (or would)
    counted_change: int  # the public total's change
    total_before: int
    version: int  # the version carrying the change (unchanged if counted_change is 0)

    @property
    def total_after(self) -> int:
        return self.total_before + self.counted_change


async def apply_review(
    pool: asyncpg.Pool, selection: Selection, to: Review, *, dry_run: bool
) -> ReviewOutcome:
    """Accept or invalidate the selected signatures, or show what that would do."""
    if to is Review.INVALIDATED and not selection.filtered:
        raise NoFilter("say which signatures: --reason, --ip-prefix, --domain, --since, --until")
    condition, params = selection.where(REVIEWABLE[to])
    async with pool.acquire() as conn:
        totals = await conn.fetchrow(
            "SELECT total, version FROM campaign_totals WHERE campaign = $1", selection.campaign
        )
        if totals is None:
            raise LookupError(selection.campaign)
        tx = conn.transaction()
        await tx.start()
        try:
            ids = [r[0] for r in await conn.fetch(_SELECT.format(condition), *params)]
            change = await change_review(conn, ids, to)
        except BaseException:
            await tx.rollback()
            raise
        if dry_run:
            await tx.rollback()
        else:
            await tx.commit()
    return ReviewOutcome(
        selection.campaign,
        to,
        dry_run,
        touched=len(change.changed),
        counted_change=change.counted.get(selection.campaign, 0),
        total_before=int(totals["total"]),
        version=change.versions.get(selection.campaign, int(totals["version"])),
    )


_SELECT = "SELECT submission_id FROM signatures WHERE {}"


@dataclass
class Held:
    """One campaign's flagged signatures: those waiting, and those already decided."""

    campaign: str
    held: int = 0
    held_confirmed: int = 0  # would count at once if accepted
    by_reason: dict[str, int] = field(default_factory=dict)
    by_prefix: dict[str, int] = field(default_factory=dict)
    by_domain: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    invalidated: int = 0


# Flagged signatures only (an index holds them): their reason, prefix, domain, decision.
_FLAGGED = """
SELECT campaign, flag, client_prefix::text AS prefix,
       email_domain, review, state = 'confirmed' AS confirmed, count(*) AS n
FROM signatures
WHERE flag IS NOT NULL AND ($1::text IS NULL OR campaign = $1)
GROUP BY 1, 2, 3, 4, 5, 6
"""


async def held_for_review(db: Queryable, campaign: str | None = None) -> list[Held]:
    """Per campaign, what the flags hold, by reason, prefix and domain, most first."""
    found: dict[str, Held] = {}
    counts: defaultdict[str, dict[str, Counter[str]]] = defaultdict(
        lambda: {"reason": Counter(), "prefix": Counter(), "domain": Counter()}
    )
    for row in await db.fetch(_FLAGGED, campaign):
        held = found.setdefault(row["campaign"], Held(row["campaign"]))
        n = int(row["n"])
        if row["review"] == Review.ACCEPTED:
            held.accepted += n
        elif row["review"] == Review.INVALIDATED:
            held.invalidated += n
        else:
            held.held += n
            held.held_confirmed += n if row["confirmed"] else 0
            mine = counts[row["campaign"]]
            mine["reason"][row["flag"]] += n
            mine["prefix"][row["prefix"] or "(none)"] += n
            mine["domain"][row["email_domain"] or "(none)"] += n
    for name, held in found.items():
        mine = counts[name]
        held.by_reason = dict(mine["reason"].most_common())
        held.by_prefix = dict(mine["prefix"].most_common(20))
        held.by_domain = dict(mine["domain"].most_common(20))
    return [found[name] for name in sorted(found)]
