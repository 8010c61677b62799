"""`signatures status`: is it keeping up, is anything rejected and why, are the totals right.

One snapshot of the consumer groups (committed offset, high watermark and lag per
partition), recent rates (from two snapshots of the offsets), the dead letters by
reason, and per campaign the published total, its age and the database's count, with
drift flagged; the busiest address prefixes and email domains of the last hour and what
the silent flags hold. Nothing here reads a name or an email.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from rich.table import Table

from runtime.campaigns import counted_rows, read_totals
from runtime.kafka import read_to_end
from runtime.offsets import PartitionLag, group_lag
from runtime.settings import Settings
from runtime.totals_feed import read_published_totals
from schemas.events import DeadLetterHeaders


@dataclass(frozen=True)
class CampaignLine:
    campaign: str
    status: str
    rows: int  # COUNT(*) of its counted (confirmed) signatures
    total: int  # campaign_totals, kept by the persist workers
    version: int
    published_total: int | None
    published_version: int | None
    published_age_s: float | None
    # for operators only, never public
    confirmation: str = "required"
    pending: int = 0  # waiting for their owners' confirmation
    by_source: dict[str, int] = field(default_factory=dict)  # counted, per source
    held: int = 0  # held by a silent flag, waiting for review (`signatures review list`)
    # the most new signatures in the last hour, per address prefix and per email domain
    busiest_prefixes: dict[str, int] = field(default_factory=dict)
    busiest_domains: dict[str, int] = field(default_factory=dict)

    @property
    def drift(self) -> int:
        """Rows the stored total disagrees with: never anything but 0 unless tampered."""
        return self.total - self.rows

    @property
    def unpublished_versions(self) -> int:
        return self.version - (self.published_version or 0)


@dataclass(frozen=True)
class Rates:
    seconds: float
    submitted_per_s: float  # new records on the input topic
    persisted_per_s: float  # records committed by the persist group


@dataclass
class Status:
    at: datetime
    partitions: list[PartitionLag]
    rates: Rates | None
    dead_letters: dict[str, int]
    last_dead_letter_at: datetime | None
    campaigns: list[CampaignLine] = field(default_factory=list)

    @property
    def lag(self) -> dict[str, int]:
        lag: Counter[str] = Counter()
        for p in self.partitions:
            lag[p.group] += p.lag
        return dict(lag)

    @property
    def healthy(self) -> bool:
        return not any(c.drift for c in self.campaigns)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "lag": self.lag,
            "partitions": [{**asdict(p), "lag": p.lag} for p in self.partitions],
            "rates": asdict(self.rates) if self.rates else None,
            "dead_letters": self.dead_letters,
            "last_dead_letter_at": (
                self.last_dead_letter_at.isoformat() if self.last_dead_letter_at else None
            ),
            "campaigns": [
                {**asdict(c), "drift": c.drift, "unpublished_versions": c.unpublished_versions}
                for c in self.campaigns
            ],
            "healthy": self.healthy,
        }


async def _partitions(settings: Settings) -> list[PartitionLag]:
    persist, count = await asyncio.gather(
        group_lag(settings, settings.persist_group, settings.topic_submitted),
        group_lag(settings, settings.count_group, settings.topic_accepted),
    )
    return [*persist, *count]


async def _dead_letters(settings: Settings) -> tuple[dict[str, int], datetime | None]:
    reasons: Counter[str] = Counter()
    last: datetime | None = None
    for record in await read_to_end(settings, settings.topic_rejected, timeout=60):
        try:
            headers = DeadLetterHeaders.from_kafka(list(record.headers))
        except ValueError:
            reasons["(unreadable headers)"] += 1
            continue
        reasons[headers.reason.value] += 1
        last = max(last, headers.rejected_at) if last else headers.rejected_at
    return dict(sorted(reasons.items())), last


async def _campaigns(settings: Settings, pool: asyncpg.Pool) -> list[CampaignLine]:
    stored, rows, published, private, busiest, held = await asyncio.gather(
        read_totals(pool),
        counted_rows(pool),
        read_published_totals(settings, timeout=60),
        pool.fetch(_PRIVATE),
        pool.fetch(_BUSIEST),
        pool.fetch(_HELD),
    )
    operators = {r["campaign"]: r for r in private}
    held_by = {r["campaign"]: int(r["n"]) for r in held}
    busy: dict[tuple[str, str], dict[str, int]] = {}
    for r in busiest:
        busy.setdefault((r["campaign"], r["kind"]), {})[r["key"]] = int(r["n"])
    now = datetime.now(UTC)
    lines = []
    for totals in stored:
        seen = published.get(totals.campaign)
        mine = operators.get(totals.campaign)
        lines.append(
            CampaignLine(
                campaign=totals.campaign,
                status=totals.status,
                rows=rows.get(totals.campaign, 0),
                total=totals.total,
                version=totals.version,
                published_total=seen.total if seen else None,
                published_version=seen.version if seen else None,
                published_age_s=(now - seen.updated_at).total_seconds() if seen else None,
                confirmation=mine["confirmation"] if mine else "?",
                pending=mine["pending"] if mine else 0,
                by_source=json.loads(mine["by_source"]) if mine else {},
                held=held_by.get(totals.campaign, 0),
                busiest_prefixes=busy.get((totals.campaign, "prefix"), {}),
                busiest_domains=busy.get((totals.campaign, "domain"), {}),
            )
        )
    return lines


# What stays with the operators: confirmation mode, pending count, counts per source.
_PRIVATE = """
SELECT t.campaign, c.confirmation, t.pending,
       coalesce((SELECT jsonb_object_agg(b.key, b.count) FROM campaign_breakdown b
                 WHERE b.campaign = t.campaign AND b.dimension = 'source' AND b.count > 0),
                '{}') AS by_source
FROM campaign_totals t JOIN campaigns c ON c.slug = t.campaign
"""


# The busiest address prefixes and email domains of the last hour, per campaign, from the
# persist workers' per-minute counts (empty while flags are off).
_BUSIEST = """
SELECT campaign, kind, key, n FROM (
    SELECT campaign, kind, key, sum(count) AS n,
           row_number() OVER (PARTITION BY campaign, kind ORDER BY sum(count) DESC, key) AS rank
    FROM signing_rates WHERE minute > now() - interval '1 hour'
    GROUP BY campaign, kind, key
) busiest
WHERE rank <= 3
ORDER BY campaign, kind, n DESC, key
"""
_HELD = """
SELECT campaign, count(*) AS n FROM signatures
WHERE flag IS NOT NULL AND review IS NULL GROUP BY campaign
"""


def _rates(
    before: list[PartitionLag], after: list[PartitionLag], seconds: float, group: str
) -> Rates:
    def total(snapshot: list[PartitionLag], group: str, attr: str) -> int:
        return sum(getattr(p, attr) for p in snapshot if p.group == group)

    return Rates(
        seconds=round(seconds, 2),
        submitted_per_s=round(
            (total(after, group, "high_watermark") - total(before, group, "high_watermark"))
            / seconds,
            1,
        ),
        persisted_per_s=round(
            (total(after, group, "committed") - total(before, group, "committed")) / seconds, 1
        ),
    )


async def collect(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    previous: Status | None = None,
    sample_s: float = 1.0,
) -> Status:
    """A snapshot; rates come from `previous`, or from a second look `sample_s` later."""
    started = time.monotonic()
    partitions = await _partitions(settings)
    rates = None
    if previous is not None:
        elapsed = (datetime.now(UTC) - previous.at).total_seconds()
        rates = _rates(previous.partitions, partitions, elapsed, settings.persist_group)
    elif sample_s > 0:
        await asyncio.sleep(max(sample_s - (time.monotonic() - started), 0))
        first, partitions = partitions, await _partitions(settings)
        rates = _rates(first, partitions, time.monotonic() - started, settings.persist_group)
    (dead, last), campaigns = await asyncio.gather(
        _dead_letters(settings), _campaigns(settings, pool)
    )
    return Status(datetime.now(UTC), partitions, rates, dead, last, campaigns)


def render(status: Status) -> list[Table]:
    """The screen for the person on call: groups, rates, dead letters, campaigns."""
    groups = Table(title="consumer groups", title_justify="left")
    for column in ("group", "topic", "partition", "committed", "high watermark", "lag"):
        groups.add_column(column, justify="right" if column != "group" else "left")
    for p in status.partitions:
        groups.add_row(
            p.group, p.topic, str(p.partition), f"{p.committed:,}", f"{p.high_watermark:,}",
            _lag(p.lag),
        )  # fmt: skip
    summary = Table(title="throughput and dead letters", title_justify="left", show_header=False)
    summary.add_column()
    summary.add_column(justify="right")
    for group, lag in status.lag.items():
        summary.add_row(f"lag of {group}", _lag(lag))
    if status.rates:
        r = status.rates
        summary.add_row(f"submitted (last {r.seconds:g} s)", f"{r.submitted_per_s:,.1f}/s")
        summary.add_row(f"persisted (last {r.seconds:g} s)", f"{r.persisted_per_s:,.1f}/s")
    for reason, n in status.dead_letters.items():
        summary.add_row(f"dead letters: {reason}", f"{n:,}")
    if not status.dead_letters:
        summary.add_row("dead letters", "none")
    elif status.last_dead_letter_at:
        summary.add_row(
            "last dead letter", status.last_dead_letter_at.isoformat(timespec="seconds")
        )
    campaigns = Table(title="campaigns", title_justify="left")
    for column in ("campaign", "status", "confirmation", "published", "version", "age",
                   "stored total", "rows", "pending", "top sources", "check"):  # fmt: skip
        campaigns.add_column(
            column,
            justify="left"
            if column in ("campaign", "status", "confirmation", "top sources")
            else "right",
        )
    for c in status.campaigns:
        published = "-" if c.published_total is None else f"{c.published_total:,}"
        age = "-" if c.published_age_s is None else f"{c.published_age_s:,.0f} s"
        if c.drift:
            check = f"[bold red]DRIFT {c.drift:+,}: run signatures reconcile[/]"
        elif c.unpublished_versions:
            check = f"[yellow]{c.unpublished_versions} version(s) not yet published[/]"
        else:
            check = "[green]ok[/]"
        sources = sorted(c.by_source.items(), key=lambda kv: -kv[1])[:3]
        campaigns.add_row(
            c.campaign, c.status, c.confirmation, published, str(c.published_version or "-"),
            age, f"{c.total:,}", f"{c.rows:,}", f"{c.pending:,}",
            ", ".join(f"{k} {n:,}" for k, n in sources) or "-", check,
        )  # fmt: skip
    return [groups, summary, campaigns, _sources(status)]


def _sources(status: Status) -> Table:
    """Where the last hour's signatures came from, and what the flags hold."""
    table = Table(title="last hour: busiest sources, and held for review", title_justify="left")
    for column in ("campaign", "address prefixes", "email domains", "held"):
        table.add_column(column, justify="right" if column == "held" else "left")
    for c in status.campaigns:
        table.add_row(
            c.campaign,
            ", ".join(f"{k} {n:,}" for k, n in c.busiest_prefixes.items()) or "-",
            ", ".join(f"{k} {n:,}" for k, n in c.busiest_domains.items()) or "-",
            f"{c.held:,}",
        )
    return table


def _lag(lag: int) -> str:
    return "[green]0[/]" if lag == 0 else f"[yellow]{lag:,}[/]"
