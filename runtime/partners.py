"""Partner organisations and their keys, in PostgreSQL.

A partner signs people up on its own site and sends their signatures with a key. The key
decides the signature's source (`partner:NAME`), so nobody can sign in a partner's name
without it. Keys are random (256 bits) with a recognisable prefix, so a leaked one is easy
to spot in a repository or a log; only their SHA-256 is stored, so the table (or a backup
of it) cannot be used to sign. A name has at most one key in use at a time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from runtime.db import Queryable

KEY_PREFIX = "sigpk_"
# The shape of a key: the prefix and 43 URL-safe characters (32 random bytes).
KEY_SHAPE = re.compile(r"sigpk_[A-Za-z0-9_-]{43}")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SOURCE_PREFIX = "partner:"


class PartnerExists(Exception):
    """The name already has a key in use."""


class UnknownPartner(Exception):
    pass


class UnknownCampaigns(Exception):
    """Some campaigns of a new key's scope do not exist."""

    def __init__(self, slugs: list[str]) -> None:
        super().__init__(", ".join(slugs))
        self.slugs = slugs


@dataclass(frozen=True, slots=True)
class Partner:
    id: int
    name: str
    campaigns: frozenset[str] | None  # None: every campaign
    confirms: bool
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.name

    def may_sign(self, campaign: str) -> bool:
        return self.campaigns is None or campaign in self.campaigns


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def _partner(row: asyncpg.Record) -> Partner:
    campaigns = row["campaigns"]
    return Partner(
        id=row["id"],
        name=row["name"],
        campaigns=frozenset(campaigns) if campaigns is not None else None,
        confirms=row["confirms"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


async def create_partner(
    pool: asyncpg.Pool, name: str, campaigns: list[str] | None, *, confirms: bool
) -> tuple[Partner, str]:
    """A new key for `name`: the partner and the key, which is never stored or shown again.

    Refused (PartnerExists) while the name has a key in use; a revoked name gets a new key.
    """
    if not NAME_PATTERN.match(name):
        raise ValueError("name")
    scope = sorted(set(campaigns)) if campaigns else None
    key = new_key()
    async with pool.acquire() as conn, conn.transaction():
        if scope is not None:
            known = await conn.fetch("SELECT slug FROM campaigns WHERE slug = ANY($1)", scope)
            missing = sorted(set(scope) - {row["slug"] for row in known})
            if missing:
                raise UnknownCampaigns(missing)
        try:
            row = await conn.fetchrow(
                """INSERT INTO partners (name, key_hash, campaigns, confirms)
                   VALUES ($1, $2, $3, $4) RETURNING *""",
                name,
                key_hash(key),
                scope,
                confirms,
            )
        except asyncpg.UniqueViolationError:
            raise PartnerExists(name) from None
    assert row is not None  # noqa: S101 - INSERT … RETURNING returns the row
    return _partner(row), key


async def list_partners(conn: Queryable) -> list[Partner]:
    """Every key ever issued, revoked ones included; never the keys themselves."""
    rows = await conn.fetch("SELECT * FROM partners ORDER BY name, created_at, id")
    return [_partner(row) for row in rows]


async def revoke_partner(pool: asyncpg.Pool, name: str) -> bool:
    """Revoke the name's key in use; False if it had none left (already revoked).

    UnknownPartner if the name never had a key. API processes stop accepting it within
    their key cache's refresh interval (about 2 s).
    """
    async with pool.acquire() as conn, conn.transaction():
        revoked = await conn.fetchval(
            """UPDATE partners SET revoked_at = now()
               WHERE name = $1 AND revoked_at IS NULL RETURNING id""",
            name,
        )
        if revoked is not None:
            return True
        if await conn.fetchval("SELECT 1 FROM partners WHERE name = $1 LIMIT 1", name) is None:
            raise UnknownPartner(name)
        return False


async def keys_in_use(conn: Queryable) -> dict[bytes, Partner]:
    """Every key in use, by its hash: what the API checks a request's key against."""
    rows = await conn.fetch("SELECT * FROM partners WHERE revoked_at IS NULL")
    return {bytes(row["key_hash"]): _partner(row) for row in rows}


async def vouching_sources(conn: Queryable) -> list[str]:
    """The sources (`partner:NAME`) of partners that confirm their signers themselves.

    A revoked partner vouches for nobody any more, not even for what it sent before.
    """
    rows = await conn.fetch(
        "SELECT name FROM partners WHERE confirms AND revoked_at IS NULL ORDER BY name"
    )
    return [SOURCE_PREFIX + row["name"] for row in rows]


async def mark_used(conn: Queryable, partner_id: int) -> None:
    """Record that a key was used; callers do this at most about once a minute."""
    await conn.execute(
        """UPDATE partners SET last_used_at = now()
           WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '30 s')""",
        partner_id,
    )
