"""The login users of the services, members of the group roles the migrations grant.

`schemas/migrations/0011_roles.sql` creates `signatures_api`, `signatures_worker` and
`signatures_operator`, which cannot log in. The migration cannot know passwords, so
`signatures migrate` (and `up`), connected as the owner, makes the user named in each of
SIGNATURES_API_DATABASE_URL, SIGNATURES_WORKER_DATABASE_URL and
SIGNATURES_OPERATOR_DATABASE_URL a login member of that role only, with the URL's password
(a URL without one leaves the user's password as it is: none for a new user, as with
local trust authentication). A URL left unset, or naming the owner itself, is left alone:
that service keeps connecting as the owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import asyncpg

from runtime.settings import Service, Settings

GROUP_ROLES: dict[Service, str] = {
    "api": "signatures_api",
    "worker": "signatures_worker",
    "operator": "signatures_operator",
}


class LoginRefused(RuntimeError):
    """A URL names a user that must not become a service's login (a superuser, say)."""


@dataclass(frozen=True, slots=True)
class Login:
    service: Service
    user: str
    created: bool


def _user_and_password(url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return user, password


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_logins(owner_url: str, settings: Settings) -> list[Login]:
    """Create or update the services' login users; what was done, never a password."""
    owner, _ = _user_and_password(owner_url)
    wanted: list[tuple[Service, str, str | None]] = []
    for service in GROUP_ROLES:
        url = settings.database_url_for(service)
        user, password = _user_and_password(url)
        if url == settings.database_url or user is None or user == owner:
            continue
        wanted.append((service, user, password))
    if not wanted:
        return []
    done: list[Login] = []
    conn = await asyncpg.connect(owner_url)
    try:
        for service, user, password in wanted:
            group = GROUP_ROLES[service]
            row = await conn.fetchrow(
                "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = $1",
                user,
            )
            if row is not None and any(row.values()):
                raise LoginRefused(
                    f"SIGNATURES_{service.upper()}_DATABASE_URL: its user is a superuser or "
                    "may create roles; name a user of its own"
                )
            others = await conn.fetchval(
                """SELECT array_agg(g.rolname::text) FROM pg_auth_members m
                   JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                   WHERE u.rolname = $1 AND g.rolname <> $2""",
                user,
                group,
            )
            if others:
                raise LoginRefused(
                    f"SIGNATURES_{service.upper()}_DATABASE_URL: its user is a member of "
                    "other roles too; name a user of its own"
                )
            # CREATE/ALTER ROLE take no parameters: the password goes in as a literal,
            # quoted by the server's own function, and is never logged. A URL without one
            # leaves the user's password as it is (a .pgpass file, say, or none for trust).
            clause = (
                " PASSWORD " + await conn.fetchval("SELECT quote_literal($1::text)", password)
                if password is not None
                else ""
            )
            verb = "CREATE" if row is None else "ALTER"
            await conn.execute(f"{verb} ROLE {_quoted(user)} LOGIN{clause}")
            await conn.execute(f"GRANT {group} TO {_quoted(user)}")
            done.append(Login(service, user, row is None))
    finally:
        await conn.close()
    return done
