"""Realistic petition signatures for demos and benchmarks.

Names from many countries and scripts (Faker locales), unique emails per person across
runs, about 5 % repeat signers whose email is varied in ways that normalise back to the
same person (case, whitespace, NFD, upper-case IDN domain), and about 1 % submissions
that are invalid in a known way, each with the reason code validation must give it.
"""

from __future__ import annotations

import json
import random
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from faker import Faker

from schemas.reasons import Reason


class Kind(StrEnum):
    FIRST = "first"  # a new person
    DUPLICATE = "duplicate"  # the same person again, under a new submission id
    INVALID = "invalid"  # must fail validation


@dataclass(frozen=True, slots=True)
class Generated:
    kind: Kind
    body: dict[str, object]  # an HTTP JSON body
    invalid_reason: str | None  # the reason code validation gives an INVALID body


# locale, country, language, weight (Italy first: the seed campaign is Italian)
LOCALES: list[tuple[str, str, str, int]] = [
    ("it_IT", "IT", "it", 40),
    ("en_GB", "GB", "en", 8),
    ("en_US", "US", "en", 8),
    ("de_DE", "DE", "de", 6),
    ("fr_FR", "FR", "fr", 6),
    ("es_ES", "ES", "es", 5),
    ("ru_RU", "RU", "ru", 5),
    ("uk_UA", "UA", "uk", 2),
    ("pl_PL", "PL", "pl", 3),
    ("pt_BR", "BR", "pt", 3),
    ("tr_TR", "TR", "tr", 2),
    ("el_GR", "GR", "el", 2),
    ("ja_JP", "JP", "ja", 2),
    ("zh_CN", "CN", "zh", 2),
    ("ko_KR", "KR", "ko", 1),
    ("hi_IN", "IN", "hi", 1),
    ("ar_SA", "SA", "ar", 1),
    ("he_IL", "IL", "he", 1),
    ("fa_IR", "IR", "fa", 1),
]
DOMAINS = [
    "gmail.com", "libero.it", "yahoo.it", "outlook.com", "hotmail.it", "tiscali.it",
    "mail.ru", "yandex.ru", "gmx.de", "web.de", "orange.fr", "proton.me", "example.org",
]  # fmt: skip
UNICODE_LOCALS = ["josé", "zoë", "иван", "μαρία", "françois", "jürgen", "ñandú"]
IDN_DOMAINS = ["esempio.it", "почта.рф", "bücher.de", "例え.jp"]
POOL_SIZE = 200  # Faker is slow per call: names are drawn once per locale, then combined


def _name_pools(seed: int | None) -> list[tuple[list[str], list[str], str, str]]:
    pools = []
    for locale, country, language, _weight in LOCALES:
        fake = Faker(locale)
        if seed is not None:
            fake.seed_instance(seed)
        firsts = [fake.first_name() for _ in range(POOL_SIZE)]
        lasts = [fake.last_name() for _ in range(POOL_SIZE)]
        pools.append((firsts, lasts, country, language))
    return pools


def _ascii_local(rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    name = "".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))
    return f"{name}.{rng.getrandbits(48):012x}"


def _email(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.015:
        return f"{rng.choice(UNICODE_LOCALS)}.{rng.getrandbits(48):012x}@{rng.choice(DOMAINS)}"
    if roll < 0.03:
        return f"{_ascii_local(rng)}@{rng.choice(IDN_DOMAINS)}"
    return f"{_ascii_local(rng)}@{rng.choice(DOMAINS)}"


def _variant(email: str, rng: random.Random) -> str:
    """The same address as the same person might type it again: same dedupe key."""
    local, domain = email.rsplit("@", 1)
    choice = rng.randrange(5)
    if choice == 0:
        return email.upper()
    if choice == 1:
        return f"{local}@{domain.upper()}"
    if choice == 2:
        return f"  {local.title()}@{domain} "
    if choice == 3:
        return unicodedata.normalize("NFD", email.upper())
    return f"{local.capitalize()}@{domain}"


_INVALID: list[tuple[Reason, Callable[[dict[str, object]], object]]] = [
    (Reason.INVALID_EMAIL, lambda b: b.update(email=str(b["email"]).replace("@", "."))),
    (Reason.INVALID_EMAIL, lambda b: b.update(email="two words@example.org")),
    (Reason.INVALID_EMAIL, lambda b: b.update(email=f"Bob <{b['email']}>")),
    (Reason.EMPTY_FIELD, lambda b: b.update(first_name="  ")),
    (Reason.FIELD_TOO_LONG, lambda b: b.update(last_name="x" * 101)),
    (Reason.NUL_BYTE, lambda b: b.update(first_name=f"{b['first_name']}\x00")),
    (Reason.CONTROL_CHARACTERS, lambda b: b.update(last_name=f"{b['last_name']}\x1b[31m")),
    (Reason.INVALID_COUNTRY, lambda b: b.update(country="XX")),
    (Reason.INVALID_FIELD, lambda b: b.update(consent="yes")),
    (Reason.MISSING_FIELD, lambda b: b.pop("email")),
]


def generate(
    count: int,
    *,
    seed: int | None = None,
    duplicate_rate: float = 0.05,
    invalid_rate: float = 0.01,
) -> Iterator[Generated]:
    """`count` submissions as HTTP JSON bodies (no campaign, no source)."""
    rng = random.Random(seed)
    pools = _name_pools(seed)
    weights = [weight for *_, weight in LOCALES]
    people: list[dict[str, object]] = []
    now = datetime.now(UTC).isoformat()
    for _ in range(count):
        roll = rng.random()
        firsts, lasts, country, language = rng.choices(pools, weights=weights)[0]
        body: dict[str, object] = {
            "submission_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "first_name": rng.choice(firsts),
            "last_name": rng.choice(lasts),
            "email": _email(rng),
            "country": country,
            "consent": rng.random() < 0.6,
            "language": language,
            "submitted_at": now,
        }
        if rng.random() < 0.5:
            body["postcode"] = f"{rng.randrange(10000, 99999)}"
        if roll < invalid_rate:
            reason, spoil = rng.choice(_INVALID)
            spoil(body)
            yield Generated(Kind.INVALID, body, reason.value)
        elif roll < invalid_rate + duplicate_rate and people:
            earlier = rng.choice(people)
            again = {**earlier, "submission_id": body["submission_id"]}
            again["email"] = _variant(str(earlier["email"]), rng)
            yield Generated(Kind.DUPLICATE, again, None)
        else:
            people.append(body)
            yield Generated(Kind.FIRST, body, None)


def submission_message(body: dict[str, object], *, campaign: str, source: str) -> bytes:
    """The body as a record for signatures.submitted, as a partner would produce it."""
    record = {**body, "campaign": campaign, "source": source}
    return json.dumps(record, ensure_ascii=False).encode()
