"""Signers' personal data encrypted at rest: first name, last name, email and postcode.

Envelope encryption with AES-256-GCM (the `cryptography` package):
- a master key (32 bytes, base64) from SIGNATURES_MASTER_KEY, or under `up` from a key
  file in the state directory; it never enters the database. An optional previous master
  key (SIGNATURES_PREVIOUS_MASTER_KEY) is accepted for unwrapping while keys are rotated;
- data keys, one current per campaign (table `data_keys`, schemas/migrations/0009), stored
  only wrapped by the master key, with the fingerprint of the master key that wrapped them;
- per row, one blob `nonce ‖ AES-GCM(data key, record)` in `signatures.pii`, the data key
  in `signatures.key_id`. The associated data is the row's submission id and campaign, so
  a blob moved to another row (or campaign) fails to decrypt.

One blob per row rather than one per column: the persist worker is the hot path (about
25 µs of worker CPU per message), and measured here one AES-GCM call per row over the four
fields serialised together costs about 1.3 µs, four calls (one per field) about 5.5 µs:
over a fifth of the budget. Nothing reads one field without the others' row anyway.

The record is the four fields joined by U+001F (unit separator), after a version byte:
validation refuses control characters in every field (schemas/submission.py), so the
separator cannot occur in them; a missing postcode is a missing fourth field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from uuid import UUID

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runtime.db import Conn

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_RECORD_VERSION = b"\x01"
_SEP = "\x1f"
_WRAP_LABEL = b"signatures data key v1\x00"
_FINGERPRINT_LABEL = b"signatures master key fingerprint v1"


class KeyProblem(Exception):
    """A key problem (wrong master key, unknown data key); never carries personal data."""


class DecryptionError(KeyProblem):
    pass


def parse_master_key(text: str) -> bytes:
    """32 bytes from base64 (standard or URL-safe, padding optional); ValueError if not."""
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be 32 bytes in base64 (e.g. `signatures keys generate`)") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"must be 32 bytes in base64, not {len(raw)} (e.g. `signatures keys generate`)"
        )
    return raw


def new_master_key() -> str:
    """A new master key, as SIGNATURES_MASTER_KEY expects it (URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


def fingerprint(master: bytes) -> str:
    """Which master key this is, without revealing it (stored beside each wrapped key)."""
    return hmac.new(master, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def _wrap_aad(campaign: str, version: int) -> bytes:
    return _WRAP_LABEL + f"{campaign}\x00{version}".encode()


def wrap(master: bytes, data_key: bytes, campaign: str, version: int) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master).encrypt(nonce, data_key, _wrap_aad(campaign, version))


def unwrap(master: bytes, wrapped: bytes, campaign: str, version: int) -> bytes:
    try:
        return AESGCM(master).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(campaign, version)
        )
    except InvalidTag:
        raise DecryptionError(
            f"data key {campaign} v{version} does not open with this master key"
        ) from None


@dataclass(frozen=True)
class Keyring:
    """The master key, and while a rotation is under way the previous one (unwrap only)."""

    master: bytes
    previous: bytes | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.master)

    def master_for(self, print_: str) -> bytes:
        for key in (self.master, self.previous):
            if key is not None and fingerprint(key) == print_:
                return key
        raise KeyProblem(
            f"a data key was wrapped by master key {print_}, which is neither "
            f"SIGNATURES_MASTER_KEY ({self.fingerprint}) nor SIGNATURES_PREVIOUS_MASTER_KEY"
        )


class Pii(NamedTuple):
    first_name: str
    last_name: str
    email: str
    postcode: str | None


def serialise(first_name: str, last_name: str, email: str, postcode: str | None) -> bytes:
    fields = (first_name, last_name, email) if postcode is None else (
        first_name, last_name, email, postcode)  # fmt: skip
    return _RECORD_VERSION + _SEP.join(fields).encode()


def deserialise(record: bytes) -> Pii:
    if record[:1] != _RECORD_VERSION:
        raise DecryptionError("unknown record version")
    fields = record[1:].decode().split(_SEP)
    if len(fields) == 3:
        return Pii(fields[0], fields[1], fields[2], None)
    if len(fields) == 4:
        return Pii(fields[0], fields[1], fields[2], fields[3])
    raise DecryptionError("malformed record")


def row_aad(submission_id: UUID, campaign: str) -> bytes:
    """Binds a blob to its row: the same blob under another id or campaign fails."""
    return submission_id.bytes + campaign.encode()


class DataKey:
    """One unwrapped data key of a campaign."""

    __slots__ = ("_aead", "campaign", "id", "version")

    def __init__(self, key_id: int, campaign: str, version: int, key: bytes) -> None:
        self.id = key_id
        self.campaign = campaign
        self.version = version
        self._aead = AESGCM(key)

    @property
    def encryptor(self) -> Callable[[bytes, bytes, bytes], bytes]:
        """AES-GCM encrypt(nonce, record, associated data) of this key, for tight loops."""
        return self._aead.encrypt

    def seal(self, record: bytes, submission_id: UUID, campaign: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, record, row_aad(submission_id, campaign))

    def seal_many(self, items: Sequence[tuple[bytes, UUID]], campaign: str) -> list[bytes]:
        """Blobs for many records of this key's campaign: one random read for all nonces."""
        nonces = os.urandom(NONCE_BYTES * len(items))
        encrypt = self._aead.encrypt
        suffix = campaign.encode()
        out = []
        for i, (record, submission_id) in enumerate(items):
            nonce = nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]
            out.append(nonce + encrypt(nonce, record, submission_id.bytes + suffix))
        return out

    def open(self, blob: bytes, submission_id: UUID, campaign: str) -> bytes:
        try:
            return self._aead.decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], row_aad(submission_id, campaign)
            )
        except InvalidTag:
            raise DecryptionError(
                f"signature {submission_id} does not decrypt under data key {self.id}"
            ) from None


# The current keys of these campaigns, locked against deletion until the caller's
# transaction ends (a rotation deletes a retired key only once no row uses it).
_CURRENT = """
SELECT id, campaign, version, wrapped, master_fingerprint FROM data_keys
WHERE campaign = ANY($1::text[]) AND current
ORDER BY campaign
FOR KEY SHARE
"""

_CREATE = """
INSERT INTO data_keys (campaign, version, wrapped, master_fingerprint)
SELECT $1, 1, $2, $3 FROM campaigns WHERE slug = $1
ON CONFLICT DO NOTHING
"""

_BY_ID = """
SELECT id, campaign, version, wrapped, master_fingerprint FROM data_keys
WHERE id = ANY($1::int[])
"""


class DataKeys:
    """Data keys as this process has unwrapped them, by id; loads and creates on demand.

    The database holds only wrapped keys; unwrapped ones live in this process's memory.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._by_id: dict[int, DataKey] = {}

    def _unwrap(self, row: asyncpg.Record) -> DataKey:
        key_id: int = row["id"]
        cached = self._by_id.get(key_id)
        if cached is not None:
            return cached
        master = self.keyring.master_for(row["master_fingerprint"])
        campaign: str = row["campaign"]
        version: int = row["version"]
        key = DataKey(key_id, campaign, version, unwrap(master, row["wrapped"], campaign, version))
        self._by_id[key_id] = key
        return key

    async def current(self, conn: Conn, campaigns: Iterable[str]) -> dict[str, DataKey]:
        """The current data key of each campaign that exists, created if it has none.

        Call it inside the transaction that writes with the keys: they stay locked against
        deletion until it ends. Campaigns that do not exist get no key.
        """
        wanted = sorted(set(campaigns))
        if not wanted:
            return {}
        rows = await conn.fetch(_CURRENT, wanted)
        missing = set(wanted) - {row["campaign"] for row in rows}
        if missing:
            for campaign in sorted(missing):  # one order for all writers
                key = os.urandom(KEY_BYTES)
                await conn.execute(
                    _CREATE,
                    campaign,
                    wrap(self.keyring.master, key, campaign, 1),
                    self.keyring.fingerprint,
                )
            rows = await conn.fetch(_CURRENT, wanted)
        return {row["campaign"]: self._unwrap(row) for row in rows}

    async def by_ids(self, conn: Conn, key_ids: Iterable[int | None]) -> dict[int, DataKey]:
        wanted = {k for k in key_ids if k is not None}
        unknown = [k for k in wanted if k not in self._by_id]
        if unknown:
            for row in await conn.fetch(_BY_ID, unknown):
                self._unwrap(row)
        missing = [k for k in wanted if k not in self._by_id]
        if missing:
            raise KeyProblem(f"data keys {sorted(missing)} are not in the database")
        return {k: self._by_id[k] for k in wanted}

    def forget(self, key_id: int) -> None:
        self._by_id.pop(key_id, None)


# What a reader selects (with the table's alias s): pass the rows to `reveal`.
PII_COLUMNS = (
    "s.submission_id, s.campaign, s.key_id, s.pii, s.first_name, s.last_name, s.email, s.postcode"
)


async def reveal(conn: Conn, keys: DataKeys, rows: Sequence[asyncpg.Record]) -> list[Pii | None]:
    """The personal data of each row (selected with PII_COLUMNS), None where it was cleared.

    Rows stored before encryption (until `signatures keys encrypt` ran) give their
    plaintext columns."""
    found = await keys.by_ids(conn, (r["key_id"] for r in rows))
    out: list[Pii | None] = []
    for r in rows:
        key_id = r["key_id"]
        if key_id is not None:
            out.append(deserialise(found[key_id].open(r["pii"], r["submission_id"], r["campaign"])))
        elif r["email"]:
            out.append(Pii(r["first_name"], r["last_name"], r["email"], r["postcode"]))
        else:
            out.append(None)
    return out


async def check_master_key(conn: Conn | asyncpg.Pool, keyring: Keyring) -> None:
    """Refuse to start with a master key that did not wrap the stored data keys: every
    row would stay unreadable (KeyProblem, naming the variable and the fingerprints)."""
    known = {keyring.fingerprint}
    if keyring.previous is not None:
        known.add(fingerprint(keyring.previous))
    stored = {r["master_fingerprint"] for r in await conn.fetch(_FINGERPRINTS)}
    if stored - known:
        raise KeyProblem(
            f"SIGNATURES_MASTER_KEY: data keys in this database were wrapped by master key "
            f"{', '.join(sorted(stored - known))}, not by this one ({keyring.fingerprint}); "
            "during a rotation, set SIGNATURES_PREVIOUS_MASTER_KEY too"
        )


_FINGERPRINTS = "SELECT DISTINCT master_fingerprint FROM data_keys"
