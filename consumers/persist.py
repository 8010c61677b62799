"""The persist handler: validate, normalise, dedupe and store a batch of submissions.

Per batch: decode every record and build its row (bad ones become dead letters), which the
runner may do while the previous batch is being stored; then one transaction that checks
the campaigns and writes rows and totals; then the accepted events and dead letters are
produced and acknowledged. Only then does the runner commit the offsets.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.deadletters import dead_letter
from consumers.flags import FLAGS, FlagRules, RatePruner, email_domain, first_flag
from consumers.runner import Effects, Record
from consumers.store import PlainRow, StagingRow, StoredSignature, write_batch
from consumers.validate import Rejection, decode_fields
from runtime.campaigns import campaign_rules
from runtime.db import Conn
from runtime.dedupe import dedupe_key
from runtime.erasure import (
    Suppressions,
    lock_for_storing,
    receipt_time,
    record_suppressed,
    suppressed,
)
from runtime.failpoints import failpoint
from runtime.kafka import OutgoingRecord, produce_many
from runtime.logs import get_logger
from runtime.partners import vouching_sources
from runtime.pii import NONCE_BYTES, TAG_BYTES, DataKeys, serialise
from runtime.topics import Topics
from schemas.campaign import CampaignStatus, Confirmation
from schemas.reasons import Reason
from schemas.submission import Fields

log = get_logger("consumers.persist")


class PersistHandler:
    name = "persist"

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topics: Topics,
        secret: bytes,
        max_record_bytes: int,
        keys: DataKeys,
        flag_rules: FlagRules | None = None,
        *,
        encrypt: bool = True,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._topics = topics
        self._secret = secret
        self._max_record_bytes = max_record_bytes
        self._flag_rules = flag_rules  # None: flags off (trusted load)
        self._keys = keys
        # False only to measure what encryption costs (`signatures bench`): the record is
        # stored as it is, in a blob of the same size that no key opens
        self._encrypt = encrypt
        self._pruner = RatePruner()
        self._suppressions = Suppressions()  # the forgotten people, kept up to date

    async def prepare(self, records: Sequence[Record]) -> Effects:
        """Decode every record and build its row; no effects, so it may run while the
        previous batch is being stored. Yields to the event loop now and then for that."""
        started = time.perf_counter()
        valid: list[tuple[Record, PlainRow, bytes]] = []
        rejected: list[tuple[Record, Rejection]] = []
        for n, record in enumerate(records, 1):
            outcome = decode_fields(record.value, self._max_record_bytes)
            if isinstance(outcome, Rejection):
                rejected.append((record, outcome))
            else:
                valid.append((record, self._row(outcome), serialise(*_PII(outcome))))
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        decode_ms = round((time.perf_counter() - started) * 1000)
        return functools.partial(self._store, valid, rejected, decode_ms)

    async def _store(
        self,
        valid: list[tuple[Record, PlainRow, bytes]],
        rejected: list[tuple[Record, Rejection]],
        decode_ms: int,
    ) -> Mapping[str, int]:
        """One transaction for the batch, then its accepted events and dead letters.
        May run again for the same batch (a transient error): it changes none of its inputs."""
        started = time.perf_counter()
        rejected = list(rejected)
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_for_storing(conn)  # an erasure waits for this batch, or it for one
            valid, erased = await _without_erased(conn, valid, self._suppressions)
            rules = await campaign_rules(conn)
            statuses = {slug: status for slug, (status, _) in rules.items()}
            confirm = {slug for slug, (_, c) in rules.items() if c is Confirmation.REQUIRED}
            vouchers = await vouching_sources(conn) if confirm else []
            firsts: dict[UUID, tuple[Record, PlainRow]] = {}  # by submission id
            repeats: list[tuple[Record, PlainRow]] = []  # an id again in this batch
            records: dict[UUID, bytes] = {}  # the personal data to encrypt, by submission id
            for record, row, pii in valid:
                status = statuses.get(row[1])
                if status is None:
                    rejected.append(
                        (record, Rejection(Reason.UNKNOWN_CAMPAIGN, "campaign: unknown_campaign"))
                    )
                elif status is CampaignStatus.CLOSED:
                    rejected.append(
                        (record, Rejection(Reason.CAMPAIGN_CLOSED, "campaign: campaign_closed"))
                    )
                elif firsts.setdefault(row[0], (record, row))[1] is not row:
                    repeats.append((record, row))
                else:
                    records[row[0]] = pii
            rows = await self._sealed([row for _, row in firsts.values()], records, conn)
            result = await write_batch(conn, rows, confirm, vouchers, self._flag_rules)
            rejected.extend(_reused(firsts, repeats, result.reused))
            failpoint("persist.before_db_commit")
        failpoint("persist.after_db_commit")
        stored = time.perf_counter()
        now = datetime.now(UTC)
        now_iso = now.isoformat()
        accepted = [
            _accepted(signature, now_iso, result.versions[signature.campaign])
            for signature in (*result.inserted, *result.already_stored)
        ]
        await asyncio.gather(
            produce_many(self._producer, self._topics.accepted, accepted),
            produce_many(
                self._producer,
                self._topics.rejected,
                [dead_letter(record, rejection, now) for record, rejection in rejected],
            ),
        )

        for flag, n in result.flagged.items():
            FLAGS.labels(flag).inc(n)
        if self._flag_rules is not None:
            await self._pruner.maybe_prune(self._pool)
        reasons = Counter(rejection.reason.value for _, rejection in rejected)
        return {
            "decode_ms": decode_ms,
            "db_ms": round((stored - started) * 1000),
            "produce_ms": round((time.perf_counter() - stored) * 1000),
            "inserted": len(result.inserted),
            "redelivered": len(result.already_stored) + result.removed,
            "duplicates": result.duplicates,
            "resends": result.resends,
            "dead_lettered": len(rejected),
            **({"erased": len(erased)} if erased else {}),
            **{f"rejected_{reason}": n for reason, n in sorted(reasons.items())},
            **{f"flagged_{flag}": n for flag, n in sorted(result.flagged.items())},
        }

    def _row(self, f: Fields) -> PlainRow:
        """The row: the submission's values with the dedupe key after the campaign, the
        address hash as bytes, the email's domain and the flag known so far. The names,
        email and postcode are not in it: their key and encrypted blob are appended once
        the batch's keys are known (`_sealed`)."""
        domain = email_domain(f[4])
        return (
            f[0], f[1], dedupe_key(self._secret, f[4]), f[5], *f[7:13],
            None if f[13] is None else bytes.fromhex(f[13]),
            domain,
            None if self._flag_rules is None else first_flag(f[14], domain),
        )  # fmt: skip

    async def _sealed(
        self, rows: list[PlainRow], records: dict[UUID, bytes], conn: Conn
    ) -> list[StagingRow]:
        """The rows with their personal data encrypted under their campaign's current data
        key: one AES-GCM call per row (runtime/pii.py says why one, not one per field),
        in one loop that builds the stored row (about 2 µs a row, measured here).

        In the batch's transaction: the keys read stay locked against deletion until it
        commits, and a campaign's first signature creates its key."""
        by_campaign: dict[str, list[PlainRow]] = {}
        for row in rows:
            by_campaign.setdefault(row[1], []).append(row)
        keys = await self._keys.current(conn, by_campaign)
        sealed: list[StagingRow] = []
        append = sealed.append
        for campaign, group in by_campaign.items():
            key = keys[campaign]  # every campaign here exists: unknown ones were rejected
            key_id, suffix = key.id, campaign.encode()
            nonces = os.urandom(NONCE_BYTES * len(group))
            encrypt = key.encryptor if self._encrypt else _unencrypted
            for i, row in enumerate(group):
                nonce = nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]
                record = records[row[0]]
                append((*row, key_id, nonce + encrypt(nonce, record, row[0].bytes + suffix)))
        return sealed


async def _without_erased(
    conn: Conn, valid: list[tuple[Record, PlainRow, bytes]], suppressions: Suppressions
) -> tuple[list[tuple[Record, PlainRow, bytes]], list[tuple[UUID, str]]]:
    """The rows to store, and the submissions of forgotten people received before their
    erasure (runtime/erasure.py): those are recorded as erased, never stored nor
    dead-lettered, whatever their campaign's state."""
    erasures = await suppressions.refresh(conn)
    if not erasures or not valid:
        return valid, []
    kept: list[tuple[Record, PlainRow, bytes]] = []
    erased: list[tuple[UUID, str]] = []
    for item in valid:
        row = item[1]  # submission id, campaign, dedupe key, …, submitted_at [7], received_at [8]
        if suppressed(row[2], row[1], receipt_time(row[8], row[7]), erasures):
            erased.append((row[0], row[1]))
        else:
            kept.append(item)
    await record_suppressed(conn, erased)
    if erased:
        log.info("erased_records_suppressed", records=len(erased))
    return kept, erased


_YIELD_EVERY = 500  # records decoded between turns of the event loop

_PII = operator.itemgetter(2, 3, 4, 6)  # first_name, last_name, email, postcode of Fields


def _unencrypted(_nonce: bytes, record: bytes, _aad: bytes) -> bytes:
    """For measurement only (`signatures bench`): the record as it is, with room for a tag:
    a blob of the same size, not encrypted, that no key opens."""
    return record + _NO_TAG


_NO_TAG = bytes(TAG_BYTES)

_REUSED = Rejection(Reason.SUBMISSION_ID_REUSED, "submission_id: submission_id_reused")


def _reused(
    firsts: dict[UUID, tuple[Record, PlainRow]],
    repeats: list[tuple[Record, PlainRow]],
    stored_elsewhere: dict[UUID, tuple[str, bytes]],
) -> list[tuple[Record, Rejection]]:
    """The records whose submission id belongs to another signer or campaign.

    An id belongs to the row already stored under it, else to its first record in the
    batch. A repeat with the owner's campaign and dedupe key is a redelivery: nothing to do.
    """
    if not repeats and not stored_elsewhere:  # the common batch: nothing to look up
        return []
    owners = {sid: (row[1], row[2]) for sid, (_, row) in firsts.items()}
    owners.update(stored_elsewhere)
    refused = [(firsts[sid][0], _REUSED) for sid in stored_elsewhere]
    refused.extend(
        (record, _REUSED) for record, row in repeats if owners[row[0]] != (row[1], row[2])
    )
    return refused


def _accepted(signature: StoredSignature, now: str, version: int) -> OutgoingRecord:
    """An AcceptedEvent as JSON, written directly: this runs once per new signature.

    Every field is an int, a UUID, an ISO timestamp or a string already validated against a
    pattern without quotes or backslashes, so no escaping is needed (a test parses it back).
    """
    value = (
        f'{{"signature_id":{signature.signature_id},"submission_id":"{signature.submission_id}",'
        f'"campaign":"{signature.campaign}","country":"{signature.country}",'
        f'"source":"{signature.source}","state":"{signature.state}",'
        f'"submitted_at":"{signature.submitted_at.isoformat()}",'
        f'"accepted_at":"{now}","totals_version":{version}}}'
    )
    return (signature.campaign.encode(), value.encode(), [])
