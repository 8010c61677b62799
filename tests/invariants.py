"""A history of what producers were told, and the checker of the delivery promise.

Every submission a fault test sends is recorded with what its sender was told:
acknowledged (the broker acked it, or the API answered 202), refused (a 4xx) or unknown
(a timeout, a 503, a dropped connection). Each one has a unique id and, unless the test
means it to repeat a person, a unique synthetic email. After the faults heal and the
pipeline drains, `check` compares the history with PostgreSQL and the topics and returns
every violation it finds, as a sentence; an empty list means the promise held.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import asyncpg

from consumers.validate import Rejection, decode
from ops.dlq import DeadLetter, read_dead_letters
from runtime.kafka import read_to_end
from runtime.offsets import committed_offsets, group_lag
from runtime.settings import Settings
from schemas.events import CampaignTotals
from schemas.submission import Submission


class Told(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    REFUSED = "refused"
    UNKNOWN = "unknown"


@dataclass
class Sent:
    submission_id: str
    person: str  # who signed: submissions with the same person count once
    campaign: str
    valid: bool  # whether the test meant it to be counted
    told: Told


@dataclass
class History:
    sent: dict[str, Sent] = field(default_factory=dict)
    sentinels: set[str] = field(default_factory=set)  # PII that must never leak

    def record(
        self, body: dict[str, Any], *, told: Told, valid: bool = True, person: str | None = None
    ) -> None:
        """Record one send; a repeated send of the same id keeps its best answer.

        `person` names who signed when the test varies one email (case, IDN, NFD);
        by default it is the email, trimmed and case-folded.
        """
        sid = str(body["submission_id"])
        person = person or str(body.get("email", "")).strip().casefold()
        previous = self.sent.get(sid)
        if previous is not None and previous.told is Told.ACKNOWLEDGED:
            told = Told.ACKNOWLEDGED
        self.sent[sid] = Sent(sid, person, str(body["campaign"]), valid, told)
        for key in ("email", "first_name", "last_name", "postcode"):
            value = body.get(key)
            if isinstance(value, str) and len(value.strip()) >= 6:
                self.sentinels.add(value.strip())

    def acknowledged(self) -> list[Sent]:
        return [s for s in self.sent.values() if s.told is Told.ACKNOWLEDGED]


# Where every stored signature ends: counted, waiting for its owner, removed by its
# owner, or its confirmation email refused for good.
FINAL_STATES = frozenset({"confirmed", "pending", "removed", "undeliverable"})


# Where a dead letter's record came from: its topic, partition and offset.
Origin = tuple[str, int, int]


@dataclass(frozen=True)
class Described:
    """What a stored row, a recorded duplicate or an erased submission keeps of the record
    it came from (every kind keeps the campaign; rows and duplicates keep the source; rows
    keep country and submission time through erasure by their owner and retention)."""

    campaign: str
    source: str | None = None
    country: str | None = None
    submitted_at: datetime | None = None

    def differs_from(self, record: Submission) -> list[str]:
        """The fields in which this differs from the record's normalised values."""
        theirs = {
            "campaign": record.campaign,
            "source": record.source,
            "country": record.country,
            "submitted_at": record.submitted_at,
        }
        return [
            name
            for name, value in theirs.items()
            if (kept := getattr(self, name)) is not None and kept != value
        ]


@dataclass
class Outcomes:
    rows: dict[str, str]  # submission_id -> campaign
    duplicates: set[str]
    dead_letters: dict[Origin, DeadLetter]  # by origin topic, partition and offset
    dead_lettered_ids: set[str]  # submissions dead-lettered from the submitted topic
    states: dict[str, str] = field(default_factory=dict)  # submission_id -> state
    # the rows that count in public, by the rows' own `counted` column: confirmed and not
    # held by a flag nor invalidated (schemas/migrations/0008_flags.sql)
    counted: set[str] = field(default_factory=set)
    # submissions of forgotten people: deleted by an erasure, or suppressed afterwards
    # (schemas/migrations/0010_erasure_retention.sql)
    erased: set[str] = field(default_factory=set)
    # what each row, duplicate and erased submission says of its record, by submission id
    kept: dict[str, Described] = field(default_factory=dict)

    @classmethod
    async def read(cls, settings: Settings, pool: asyncpg.Pool) -> Outcomes:
        stored = await pool.fetch(
            "SELECT submission_id, campaign, state, counted, source, country, submitted_at "
            "FROM signatures"
        )
        rows = {str(r["submission_id"]): r["campaign"] for r in stored}
        states = {str(r["submission_id"]): r["state"] for r in stored}
        counted = {str(r["submission_id"]) for r in stored if r["counted"]}
        kept = {
            str(r["submission_id"]): Described(
                r["campaign"], r["source"], r["country"], r["submitted_at"]
            )
            for r in stored
        }
        duplicates: set[str] = set()
        for r in await pool.fetch(
            "SELECT submission_id, campaign, source FROM duplicate_submissions"
        ):
            duplicates.add(str(r["submission_id"]))
            kept.setdefault(str(r["submission_id"]), Described(r["campaign"], r["source"]))
        dead: dict[Origin, DeadLetter] = {}
        dead_ids: set[str] = set()
        for letter in await read_dead_letters(settings):
            h = letter.headers
            dead[(h.origin_topic, h.origin_partition, h.origin_offset)] = letter
            sid = _submission_id(letter.value)
            if sid is not None and h.origin_topic == settings.topic_submitted:
                dead_ids.add(sid)
        erased: set[str] = set()
        for r in await pool.fetch("SELECT submission_id, campaign FROM erased_submissions"):
            erased.add(str(r["submission_id"]))
            kept.setdefault(str(r["submission_id"]), Described(r["campaign"]))
        return cls(rows, duplicates, dead, dead_ids, states, counted, erased, kept)

    def unaccounted(self, topic: str, partition: int, offset: int, value: bytes | None) -> str:
        """Why a consumed record ended nowhere, or "" if it ended as a dead letter (from
        that very topic, partition and offset), or as the row, duplicate or erasure of its
        own submission: one that keeps the record's campaign, source, country and time."""
        if (topic, partition, offset) in self.dead_letters:
            return ""
        sid = _submission_id(value)
        kept = self.kept.get(sid) if sid is not None else None
        if sid is None or kept is None:
            return "was dropped"
        record = decode(value, _ANY_SIZE)
        if isinstance(record, Rejection):
            return f"is invalid ({record.reason.value}) but submission {sid} is kept"
        differs = kept.differs_from(record)
        if differs:
            return f"is not what submission {sid} keeps ({', '.join(differs)} differ)"
        return ""


_ANY_SIZE = 1 << 30  # the check reads back whatever was consumed, whatever its size


def _submission_id(value: bytes | None) -> str | None:
    try:
        parsed = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("submission_id"), str):
        return str(parsed["submission_id"])
    return None


def dead_letter_problems(
    letters: dict[Origin, DeadLetter], topics: dict[str, Sequence[Any]]
) -> list[str]:
    """Each dead letter is the record at its origin, byte for byte, on a topic consumed."""
    at = {
        (topic, r.partition, r.offset): r.value
        for topic, records in topics.items()
        for r in records
    }
    problems = []
    for origin, letter in letters.items():
        where = "{}:{}:{}".format(*origin)
        if origin not in at:
            problems.append(f"dead letter {letter.ref} has no record at its origin {where}")
        elif at[origin] != letter.value:
            problems.append(f"dead letter {letter.ref} differs from its origin {where}")
    return problems


async def uncovered_commits(settings: Settings, pool: asyncpg.Pool) -> list[str]:
    """Committed offsets never pass what has been persisted (or dead-lettered)."""
    topic = settings.topic_submitted
    committed = await committed_offsets(settings, settings.persist_group, topic)
    outcomes = await Outcomes.read(settings, pool)
    return [
        f"offset {record.partition}/{record.offset} committed but not persisted"
        for record in await read_to_end(settings, topic, timeout=30)
        if record.offset < committed.get(record.partition, 0)
        and outcomes.unaccounted(topic, record.partition, record.offset, record.value)
    ]


async def lag(settings: Settings) -> dict[str, int]:
    """Records not yet committed, per consumer group, summed over partitions."""
    result = {}
    for group, topic in (
        (settings.persist_group, settings.topic_submitted),
        (settings.count_group, settings.topic_accepted),
    ):
        result[group] = sum(p.lag for p in await group_lag(settings, group, topic))
    return result


def totals_problems(
    records: Sequence[bytes | None],
    counts: dict[str, int],
    may_decrease: Collection[str] = frozenset(),
) -> list[str]:
    """The totals topic, in order: what readers see never goes backwards and ends exact.

    In `may_decrease` (campaigns some of whose counted signatures were erased) a newer
    version may count fewer."""
    problems = []
    by_version: dict[tuple[str, int], int] = {}
    highest: dict[str, CampaignTotals] = {}
    for value in records:
        if not value:
            continue
        totals = CampaignTotals.model_validate_json(value)
        seen = by_version.setdefault((totals.campaign, totals.version), totals.total)
        if seen != totals.total:
            problems.append(
                f"{totals.campaign} v{totals.version} published as {seen} and {totals.total}"
            )
        known = highest.get(totals.campaign)
        if known is None or totals.version > known.version:
            if (
                known is not None
                and totals.total < known.total
                and totals.status == known.status
                and totals.campaign not in may_decrease
            ):
                problems.append(f"{totals.campaign} went back from {known.total} to {totals.total}")
            highest[totals.campaign] = totals
    for campaign, count in counts.items():
        published = highest.get(campaign)
        if published is None and count:
            problems.append(f"{campaign}: nothing published for {count} rows")
        elif published is not None and published.total != count:
            problems.append(f"{campaign}: published {published.total}, COUNT(*) {count}")
    return problems


def leaks(sentinels: Iterable[str], texts: Iterable[tuple[str, str]]) -> list[str]:
    """Where a sentinel (a name or email used in the test) appears in a text."""
    needles = [s.casefold() for s in sentinels]
    found: list[str] = []
    for where, text in texts:
        lowered = text.casefold()
        found.extend(f"PII leaked into {where}" for needle in needles if needle in lowered)
    return sorted(set(found))


async def published_texts(settings: Settings) -> list[tuple[str, str]]:
    """Everything the pipeline published that must be free of PII (not the DLQ payloads)."""
    texts: list[tuple[str, str]] = []
    for topic in (settings.topic_accepted, settings.topic_totals):
        for record in await read_to_end(settings, topic, timeout=30):
            texts.append((topic, (record.value or b"").decode("utf-8", "replace")))
    for record in await read_to_end(settings, settings.topic_rejected, timeout=30):
        headers = " ".join(v.decode("utf-8", "replace") for _, v in record.headers)
        texts.append((f"{settings.topic_rejected} headers", headers))
    return texts


def log_texts(paths: Iterable[Path]) -> list[tuple[str, str]]:
    return [(path.name, path.read_text(errors="replace")) for path in paths if path.exists()]


async def _stored_totals_problems(
    pool: asyncpg.Pool, outcomes: Outcomes
) -> tuple[list[str], dict[str, int]]:
    """Every row in a known state; stored totals equal the rows that count, pending counts
    the pending ones. Returns the problems and the counted rows per campaign."""
    problems: list[str] = []
    problems.extend(
        f"signature {sid} is in no known state ({state})"
        for sid, state in outcomes.states.items()
        if state not in FINAL_STATES
    )
    counts: dict[str, int] = defaultdict(int)  # what the public totals must count
    pending: dict[str, int] = defaultdict(int)
    for sid, campaign in outcomes.rows.items():
        if sid in outcomes.counted:
            counts[campaign] += 1
        if outcomes.states.get(sid) == "pending":
            pending[campaign] += 1
    for row in await pool.fetch("SELECT campaign, total, pending FROM campaign_totals"):
        if row["total"] != counts.get(row["campaign"], 0):
            problems.append(
                f"{row['campaign']}: campaign_totals {row['total']}, "
                f"confirmed rows {counts.get(row['campaign'], 0)}"
            )
        if row["pending"] != pending.get(row["campaign"], 0):
            problems.append(
                f"{row['campaign']}: {row['pending']} pending counted, "
                f"{pending.get(row['campaign'], 0)} pending rows"
            )
        counts.setdefault(row["campaign"], 0)
    return problems, dict(counts)


async def check(
    settings: Settings,
    pool: asyncpg.Pool,
    history: History,
    *,
    logs: Iterable[Path] = (),
    extra_texts: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """Every invariant of the delivery promise, after the pipeline has drained."""
    problems: list[str] = []
    outcomes = await Outcomes.read(settings, pool)

    by_person: dict[tuple[str, str], list[Sent]] = defaultdict(list)
    for sent in history.sent.values():
        if sent.valid:
            by_person[(sent.campaign, sent.person)].append(sent)
        elif sent.submission_id in outcomes.rows:
            problems.append(f"invalid submission {sent.submission_id} was stored")
        if sent.told is Told.REFUSED and sent.submission_id in outcomes.rows:
            problems.append(f"refused submission {sent.submission_id} was stored")
    for (campaign, _), sends in by_person.items():
        stored = [s for s in sends if s.submission_id in outcomes.rows]
        acked = [s for s in sends if s.told is Told.ACKNOWLEDGED]
        forgotten = [s for s in sends if s.submission_id in outcomes.erased]
        if acked and not stored and not forgotten:
            problems.append(f"acknowledged {acked[0].submission_id} ({campaign}) is missing")
        # a signature its owner removed no longer stands for them: they may sign again
        standing = [s for s in stored if outcomes.states.get(s.submission_id) != "removed"]
        if len(standing) > 1:
            problems.append(f"one person stored {len(standing)} times in {campaign}")
        problems.extend(
            f"{s.submission_id} stored although refused" for s in stored if s.told is Told.REFUSED
        )
    problems.extend(
        f"dead-lettered {sid} was stored"
        for sid in outcomes.dead_lettered_ids & outcomes.rows.keys()
    )
    # an erasure is for good: no replay, redelivery or dead letter brings a row back, and
    # nothing of a forgotten person's is dead-lettered after it
    problems.extend(
        f"erased {sid} is stored again" for sid in outcomes.erased & outcomes.rows.keys()
    )

    # conservation: every consumed record ended as a row, a duplicate, a dead letter or
    # erased (rows + duplicates + dead letters + erased = records)
    # A dead-lettered record counts only under its own origin, and a row only for the
    # record it was made from.
    submitted = await read_to_end(settings, settings.topic_submitted, timeout=30)
    for r in submitted:
        why = outcomes.unaccounted(settings.topic_submitted, r.partition, r.offset, r.value)
        if why:
            problems.append(f"record {r.partition}/{r.offset} {why}")
    accepted = await read_to_end(settings, settings.topic_accepted, timeout=30)
    problems.extend(
        dead_letter_problems(
            outcomes.dead_letters,
            {settings.topic_submitted: submitted, settings.topic_accepted: accepted},
        )
    )

    stored_problems, counts = await _stored_totals_problems(pool, outcomes)
    problems.extend(stored_problems)
    for row in await pool.fetch(
        "SELECT t.campaign, t.duplicates, (SELECT count(*) FROM duplicate_submissions d "
        "WHERE d.campaign = t.campaign) AS recorded FROM campaign_totals t"
    ):
        if row["duplicates"] != row["recorded"]:
            problems.append(
                f"{row['campaign']}: {row['duplicates']} duplicates counted, "
                f"{row['recorded']} recorded"
            )
    announced = {json.loads(r.value)["signature_id"] for r in accepted if r.value}
    stored_ids = {r["id"] for r in await pool.fetch("SELECT id FROM signatures")}
    problems.extend(
        f"signature {sid} stored without an accepted event"
        for sid in sorted(stored_ids - announced)
    )
    totals = await read_to_end(settings, settings.topic_totals, timeout=30)
    erased_from = {
        r["campaign"]
        for r in await pool.fetch(
            "SELECT DISTINCT campaign FROM erased_submissions WHERE reason = 'erased'"
        )
    }
    problems.extend(totals_problems([r.value for r in totals], dict(counts), erased_from))

    problems.extend(await uncovered_commits(settings, pool))
    problems.extend(f"group {g} has lag {n}" for g, n in (await lag(settings)).items() if n)

    texts = [*await published_texts(settings), *log_texts(logs), *extra_texts]
    problems.extend(leaks(history.sentinels, texts))
    return problems
