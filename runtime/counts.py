"""The one place that moves a campaign's totals, in the caller's transaction.

New signatures (the persist workers) and every change of a signature's state (confirm,
remove, undeliverable) add their differences here, in the same transaction as the rows
they count. `total` and the breakdowns count what is public (confirmed signatures);
`pending` and `duplicates` are for operators. The version moves on only when a public
number changed, so a duplicate or a pending signature changes nothing anyone outside
can see: not the total, not the version, not the time of the last update.

Lock order, the same for every writer: the signatures rows, then `campaign_breakdown`
(sorted), then `campaign_totals` (sorted). `reconcile` relies on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from runtime.db import Conn

BreakdownKey = tuple[str, str, str]  # campaign, dimension ('country' or 'source'), key

_ADD_BREAKDOWN = """
INSERT INTO campaign_breakdown (campaign, dimension, key, count)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS d(c, dim, k, n)
ORDER BY c, dim, k
ON CONFLICT (campaign, dimension, key)
DO UPDATE SET count = campaign_breakdown.count + excluded.count
"""

# A CHECK constraint judges the row an upsert proposes before its conflict is seen, so the
# decreases (invalidating counted signatures) are proposed as 0, which still locks their
# rows in the one order, then subtracted from the rows now held.
_SUBTRACT_BREAKDOWN = """
UPDATE campaign_breakdown b SET count = b.count + d.n
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS d(c, dim, k, n)
WHERE b.campaign = d.c AND b.dimension = d.dim AND b.key = d.k
"""

_ADD_TOTAL = """
UPDATE campaign_totals
SET total = total + $2, pending = pending + $3, duplicates = duplicates + $4,
    version = version + ($2 <> 0)::int,
    updated_at = CASE WHEN $2 <> 0 THEN now() ELSE updated_at END
WHERE campaign = $1
RETURNING version
"""


_VERSIONS = "SELECT campaign, version FROM campaign_totals WHERE campaign = ANY($1::text[])"


def breakdown_of(campaign: str, country: str, source: str, n: int = 1) -> Counter[BreakdownKey]:
    return Counter({(campaign, "country", country): n, (campaign, "source", source): n})


async def add_counts(
    conn: Conn,
    *,
    counted: Counter[str],
    pending: Counter[str] | None = None,
    duplicates: Counter[str] | None = None,
    breakdown: Counter[BreakdownKey] | None = None,
    campaigns: Iterable[str] = (),
) -> dict[str, int]:
    """Add these differences (negative ones too); the version of every campaign touched.

    `campaigns` names more campaigns whose current version the caller wants back.
    """
    pending = pending or Counter()
    duplicates = duplicates or Counter()
    changes = {k: n for k, n in (breakdown or Counter()).items() if n}
    if changes:
        keys = sorted(changes)
        await conn.execute(
            _ADD_BREAKDOWN,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [max(changes[k], 0) for k in keys],
        )
        if decreases := [k for k in keys if changes[k] < 0]:
            await conn.execute(
                _SUBTRACT_BREAKDOWN,
                [k[0] for k in decreases],
                [k[1] for k in decreases],
                [k[2] for k in decreases],
                [changes[k] for k in decreases],
            )
    versions: dict[str, int] = {}
    unchanged: set[str] = set(campaigns)
    for campaign in sorted({*counted, *pending, *duplicates}):
        deltas = (counted[campaign], pending[campaign], duplicates[campaign])
        if not any(deltas):
            unchanged.add(campaign)
            continue
        unchanged.discard(campaign)
        version = await conn.fetchval(_ADD_TOTAL, campaign, *deltas)
        if version is not None:
            versions[campaign] = int(version)
    if unchanged - versions.keys():
        for row in await conn.fetch(_VERSIONS, sorted(unchanged - versions.keys())):
            versions[row["campaign"]] = int(row["version"])
    return versions
