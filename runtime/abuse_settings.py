"""The shapes of the abuse-resistance settings (rate limits, trusted proxies, flags) and of
durations (topic retention, the retention run's interval).

They are plain strings in the environment (and round-trip through `settings_env` to child
processes), checked at start like every other setting so that a typo stops the process
with the variable's name instead of switching a protection off.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from limits import parse, parse_many
from pydantic import AfterValidator

# Large providers, where many real people share a domain: a busy hour there is normal.
# Their signatures are still counted per domain (`signatures status` shows them), but
# never flagged for the domain's rate.
COMMON_DOMAINS = (
    "gmail.com,googlemail.com,outlook.com,hotmail.com,live.com,msn.com,yahoo.com,"
    "icloud.com,me.com,aol.com,proton.me,protonmail.com,gmx.de,gmx.net,web.de,t-online.de,"
    "yandex.ru,mail.ru,libero.it,virgilio.it,alice.it,tiscali.it,tim.it,fastwebnet.it,"
    "email.it,hotmail.it,outlook.it,live.it,yahoo.it,orange.fr,free.fr,laposte.net,"
    "hotmail.fr,yahoo.fr,btinternet.com,hotmail.co.uk,yahoo.co.uk,qq.com,163.com"
)
_LONGEST_WINDOW_S = 24 * 3600  # signing_rates keeps a day


def _limits(value: str) -> str:
    """One or more rates in the `limits` notation: `20/minute;200/hour`."""
    try:
        items = parse_many(value)
    except ValueError:
        raise ValueError("not a rate such as 20/minute or 20/minute;200/hour") from None
    if not items:
        raise ValueError("not a rate such as 20/minute or 20/minute;200/hour")
    return value.strip()


def _window(value: str) -> str:
    """One rate whose window fits the day that `signing_rates` keeps: `30/10minutes`."""
    try:
        item = parse(value)
    except ValueError:
        raise ValueError("not a rate such as 30/10minutes") from None
    if item.get_expiry() > _LONGEST_WINDOW_S:
        raise ValueError("the window must be at most a day")
    return value.strip()


def _networks(value: str) -> str:
    """Addresses or CIDR networks, comma-separated; written back in canonical form."""
    networks = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            networks.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"not an address or network: {part.strip()[:50]!r}") from None
    return ",".join(networks)


def _domains(value: str) -> str:
    return ",".join(d.strip().lower().rstrip(".") for d in value.split(",") if d.strip())


def _storage(value: str) -> str:
    if not value.startswith(("memory://", "redis://", "rediss://")):
        raise ValueError("must be memory:// or a redis:// (rediss://) URL")
    return value


RateLimitsText = Annotated[str, AfterValidator(_limits)]
RateWindowText = Annotated[str, AfterValidator(_window)]
NetworksText = Annotated[str, AfterValidator(_networks)]
DomainsText = Annotated[str, AfterValidator(_domains)]
StorageUrl = Annotated[str, AfterValidator(_storage)]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(value: str) -> tuple[Network, ...]:
    """A checked `NetworksText` as networks."""
    return tuple(ipaddress.ip_network(part) for part in value.split(",") if part)


def domains(value: str) -> frozenset[str]:
    """A checked `DomainsText` as a set."""
    return frozenset(part for part in value.split(",") if part)


# Durations: a whole number and a unit, `7d`, `12h`, `30m`, `90s`, `500ms`, `2w`.
_DURATION = re.compile(r"(\d{1,12})(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def duration_ms(value: str) -> int:
    """Milliseconds of a duration such as `7d`; ValueError for anything else or zero."""
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError("not a duration such as 7d, 12h, 30m or 90s")
    ms = int(match[1]) * _UNIT_MS[match[2]]
    if ms <= 0:
        raise ValueError("must be longer than zero")
    return ms


def _duration(value: str) -> str:
    duration_ms(value)
    return value.strip().lower()


DurationText = Annotated[str, AfterValidator(_duration)]
