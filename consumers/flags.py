"""The silent flags the persist worker decides: throwaway domains, and rates that people
do not reach.

The ingest API can only judge one request; whether an address prefix or an email domain
is signing one campaign faster than people do shows only in the data, across API
processes and partners. So the rates are counted here, in PostgreSQL, in the batch's own
transaction (`signing_rates`: per campaign, prefix or domain, and minute of receipt), and
the new signatures past the configured rate are flagged before the totals are counted.
A flag never refuses anything: the signature is stored and its sender told what everyone
is told; it waits for an operator (`signatures review`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from uuid import UUID

from disposable_email_domains import blocklist
from limits import parse
from prometheus_client import Counter

from runtime.abuse_settings import domains
from runtime.db import Conn, Queryable
from runtime.logs import get_logger
from runtime.settings import Settings
from schemas.flags import Flag

log = get_logger("consumers.flags")

FLAGS = Counter(
    "signatures_flags",
    "New signatures held for review by a silent flag, by reason (never an address or domain)",
    ["reason"],
)

# Rows of `signing_rates` older than this are deleted, and signatures received longer ago
# than this (a partner's old records, an import) count toward no rate.
HORIZON = timedelta(days=1)
_PRUNE_EVERY_S = 60.0


@dataclass(frozen=True)
class FlagRules:
    """The configured rates: at most `amount` new signatures per `seconds`, per campaign."""

    prefix_amount: int
    prefix_seconds: int
    domain_amount: int
    domain_seconds: int
    exempt_domains: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> FlagRules | None:
        """The rules, or None when flags are off (trusted load)."""
        if not settings.flags:
            return None
        prefix, domain = parse(settings.flag_prefix_rate), parse(settings.flag_domain_rate)
        return cls(
            prefix.amount,
            prefix.get_expiry(),
            domain.amount,
            domain.get_expiry(),
            domains(settings.flag_exempt_domains),
        )


def email_domain(normalised_email: str) -> str:
    """The domain of an email already normalised (lower-cased, IDNA-mapped)."""
    return normalised_email.rpartition("@")[2]


def is_disposable(domain: str) -> bool:
    """On the throwaway-address list, itself or as a subdomain of a listed domain."""
    if domain in blocklist:
        return True
    parts = domain.split(".")
    return any(".".join(parts[i:]) in blocklist for i in range(1, len(parts) - 1))


def first_flag(edge_flag: str | None, domain: str) -> str | None:
    """The flag a new signature carries before any rate is counted: the edge's, or a
    throwaway domain's."""
    if edge_flag is not None:
        return edge_flag
    return Flag.DISPOSABLE_DOMAIN.value if is_disposable(domain) else None


class NewSignature(NamedTuple):
    """What the rates need of a signature this batch inserted."""

    submission_id: UUID
    campaign: str
    received: datetime
    prefix: str | None
    domain: str
    flagged: bool  # already, by the edge or its domain


_ADD = """
INSERT INTO signing_rates (campaign, kind, key, minute, count)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int[])
ORDER BY 1, 2, 3, 4  -- one lock order for every worker
ON CONFLICT (campaign, kind, key, minute)
DO UPDATE SET count = signing_rates.count + excluded.count
"""

# The new signatures in the window that ends at each minute, this batch's included.
_IN_WINDOW = """
SELECT (SELECT coalesce(sum(r.count), 0) FROM signing_rates r
        WHERE r.campaign = d.campaign AND r.kind = d.kind AND r.key = d.key
          AND r.minute > d.minute - make_interval(secs => d.seconds) AND r.minute <= d.minute)
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::float8[])
     WITH ORDINALITY AS d(campaign, kind, key, minute, seconds, i)
ORDER BY d.i
"""

_FLAG = """
UPDATE signatures s SET flag = d.flag
FROM unnest($1::uuid[], $2::text[]) AS d(submission_id, flag)
WHERE s.submission_id = d.submission_id AND s.flag IS NULL
RETURNING s.submission_id, s.counted
"""

Group = tuple[str, str, str, datetime]  # campaign, kind, key, minute


async def flag_rates(
    conn: Conn, rules: FlagRules, new: Sequence[NewSignature]
) -> dict[UUID, tuple[str, bool]]:
    """Count this batch's new signatures into `signing_rates` and flag those past a rate.

    Returns the flagged ones: their reason and whether they count now (they do not). The
    signatures of a prefix or domain past its rate within one minute are flagged latest
    first; those already flagged keep their first reason.
    """
    horizon = datetime.now(UTC) - HORIZON
    groups: defaultdict[Group, list[NewSignature]] = defaultdict(list)
    for s in new:
        if s.received < horizon:
            continue
        minute = s.received.replace(second=0, microsecond=0)
        if s.prefix is not None:
            groups[(s.campaign, "prefix", s.prefix, minute)].append(s)
        groups[(s.campaign, "domain", s.domain, minute)].append(s)
    if not groups:
        return {}
    keys = sorted(groups)
    await conn.execute(
        _ADD,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        [len(groups[k]) for k in keys],
    )
    # a signature past both rates keeps the prefix's reason: prefixes are judged first
    checked = sorted(
        (k for k in keys if k[1] == "prefix" or k[2] not in rules.exempt_domains),
        key=lambda k: k[1] != "prefix",
    )
    if not checked:
        return {}
    seconds = {"prefix": rules.prefix_seconds, "domain": rules.domain_seconds}
    amount = {"prefix": rules.prefix_amount, "domain": rules.domain_amount}
    sums = await conn.fetch(
        _IN_WINDOW,
        [k[0] for k in checked],
        [k[1] for k in checked],
        [k[2] for k in checked],
        [k[3] for k in checked],
        [float(seconds[k[1]]) for k in checked],
    )
    reasons: dict[UUID, str] = {}
    for key, row in zip(checked, sums, strict=True):
        over = min(len(groups[key]), int(row[0]) - amount[key[1]])
        if over <= 0:
            continue
        reason = Flag.PREFIX_RATE.value if key[1] == "prefix" else Flag.DOMAIN_RATE.value
        latest = sorted(groups[key], key=lambda s: s.received)[-over:]
        for s in latest:
            if not s.flagged:
                reasons.setdefault(s.submission_id, reason)
    if not reasons:
        return {}
    ids = sorted(reasons)
    changed = await conn.fetch(_FLAG, ids, [reasons[i] for i in ids])
    return {
        row["submission_id"]: (reasons[row["submission_id"]], row["counted"]) for row in changed
    }


class RatePruner:
    """Deletes rows of `signing_rates` past the horizon, at most once a minute."""

    def __init__(self) -> None:
        self._next = 0.0

    async def maybe_prune(self, db: Queryable) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + _PRUNE_EVERY_S
        status = await db.execute(
            "DELETE FROM signing_rates WHERE minute < $1", datetime.now(UTC) - HORIZON
        )
        log.debug("signing_rates_pruned", rows=int(status.rsplit(" ", 1)[1]))
