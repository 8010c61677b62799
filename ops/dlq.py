"""Dead letters for operators: list them, look at one, send some back through validation.

Listing shows reasons, times and origins, never a payload. Showing one redacts the
fields that identify a person unless the operator asks to reveal them. Replaying sends
the original bytes back to the input topic; each dead letter is replayed once (recorded
in `dead_letter_replays`) unless asked again, and a replayed submission that was already
stored is recognised by its id, so repeating a replay never counts anyone twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from runtime.kafka import make_producer, read_to_end
from runtime.settings import Settings
from schemas.events import DeadLetterHeaders

PERSONAL_FIELDS = frozenset({"email", "first_name", "last_name", "postcode"})


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    headers: DeadLetterHeaders
    key: bytes | None
    value: bytes | None

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def summary(self) -> dict[str, Any]:
        """What `dlq list` shows: no payload, only its size."""
        h = self.headers
        return {
            "ref": self.ref,
            "reason": h.reason.value,
            "detail": h.detail,
            "rejected_at": h.rejected_at.isoformat(),
            "origin": f"{h.origin_topic}:{h.origin_partition}:{h.origin_offset}",
            "bytes": len(self.value or b""),
        }

    def redacted(self) -> dict[str, Any]:
        """The payload with personal fields replaced by their length."""
        if not self.value:
            return {"payload": None}
        try:
            parsed = json.loads(self.value)
        except (ValueError, UnicodeDecodeError):
            return {"payload": f"<{len(self.value)} bytes, not JSON>"}
        if not isinstance(parsed, dict):
            return {"payload": f"<JSON {type(parsed).__name__}>"}
        return {
            "payload": {
                key: (_redact(value) if key in PERSONAL_FIELDS else value)
                for key, value in parsed.items()
            }
        }


def _redact(value: object) -> str:
    return f"<redacted {len(value)} characters>" if isinstance(value, str) else "<redacted>"


async def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    letters = []
    for record in await read_to_end(settings, settings.topic_rejected, timeout=60):
        try:
            headers = DeadLetterHeaders.from_kafka(list(record.headers))
        except (ValidationError, UnicodeDecodeError):
            continue  # not one of ours
        letters.append(
            DeadLetter(record.partition, record.offset, headers, record.key, record.value)
        )
    return letters


def select(
    letters: Iterable[DeadLetter],
    *,
    reasons: Iterable[str] = (),
    since: datetime | None = None,
    origin_topic: str | None = None,
    refs: Iterable[str] = (),
) -> list[DeadLetter]:
    wanted_reasons, wanted_refs = set(reasons), set(refs)
    return [
        d
        for d in letters
        if (not wanted_reasons or d.headers.reason.value in wanted_reasons)
        and (since is None or d.headers.rejected_at >= since)
        and (origin_topic is None or d.headers.origin_topic == origin_topic)
        and (not wanted_refs or d.ref in wanted_refs)
    ]


_CLAIM = """
INSERT INTO dead_letter_replays (topic, partition, "offset")
VALUES ($1, $2, $3)
ON CONFLICT (topic, partition, "offset")
DO UPDATE SET replays = dead_letter_replays.replays + 1, replayed_at = now()
WHERE $4
RETURNING replays
"""


@dataclass
class ReplayResult:
    replayed: int = 0
    already_replayed: int = 0
    empty: int = 0  # nothing to send back (an empty or null record)


async def replay(
    settings: Settings,
    pool: asyncpg.Pool,
    letters: list[DeadLetter],
    *,
    again: bool = False,
    progress: Callable[[], None] = lambda: None,
) -> ReplayResult:
    """Send the original records back to the input topic, each once unless `again`.

    The claim is committed only after the broker has the record: a failure leaves the
    dead letter replayable, and a record sent twice is recognised by its submission id.
    """
    result = ReplayResult()
    producer = make_producer(settings)
    await producer.start()
    try:
        async with pool.acquire() as conn:
            for letter in letters:
                progress()
                if not letter.value:
                    result.empty += 1
                    continue
                async with conn.transaction():
                    claimed = await conn.fetchval(
                        _CLAIM, settings.topic_rejected, letter.partition, letter.offset, again
                    )
                    if claimed is None:
                        result.already_replayed += 1
                        continue
                    await producer.send_and_wait(
                        settings.topic_submitted,
                        key=letter.key,
                        value=letter.value,
                        headers=[
                            ("replayed_from", f"{settings.topic_rejected}:{letter.ref}".encode())
                        ],
                    )
                result.replayed += 1
    finally:
        await producer.stop()
    return result
