"""Silent flags: why a stored signature waits for an operator before it counts in public.

A flagged signature is stored like any other (pending or confirmed) and its sender is told
exactly what everyone else is told; it counts in public only once an operator accepts it
(`signatures review accept`). Two flags are decided at the edge, from what only the HTTP
request shows, and travel with the submission on Kafka (`edge_flag`); the others are
decided by the persist worker, from the data.

A signature keeps one reason: the first that applies, in the order below.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Literal, get_args

from pydantic_core import PydanticCustomError

from schemas.reasons import Reason


class Flag(StrEnum):
    # decided by the ingest API (the petition page's form)
    HONEYPOT = "honeypot"  # the form's hidden field, which people never see, was filled
    TOO_FAST = "too_fast"  # posted sooner after the form was shown than a person types
    # decided by the persist worker
    DISPOSABLE_DOMAIN = "disposable_domain"  # a throwaway-address provider
    PREFIX_RATE = "prefix_rate"  # one address prefix signing faster than people do
    DOMAIN_RATE = "domain_rate"  # one email domain signing faster than people do


class Review(StrEnum):
    """An operator's decision about signatures (`signatures review accept|invalidate`)."""

    ACCEPTED = "accepted"  # a flagged signature counts once confirmed
    INVALIDATED = "invalidated"  # never counts, whatever happens to it later


EdgeFlag = Literal["honeypot", "too_fast"]
EDGE_FLAGS = frozenset(get_args(EdgeFlag))

# IPv4 /24 or IPv6 /48: wide enough that one machine or one home's addresses fall in one
# prefix, narrow enough not to lump a whole provider together.
IPV4_PREFIX = 24
IPV6_PREFIX = 48
CLIENT_HASH_PATTERN = r"^[0-9a-f]{32}$"
_PREFIX_TEXT = re.compile(r"[0-9a-f.:]{2,39}/(24|48)")


def canonical_prefix(value: str) -> str:
    """The address prefix as the API writes it (`203.0.113.0/24`, `2001:db8:1::/48`)."""
    if not _PREFIX_TEXT.fullmatch(value):
        raise PydanticCustomError(Reason.INVALID_FIELD.value, "is not an address prefix")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise PydanticCustomError(Reason.INVALID_FIELD.value, "is not an address prefix") from None
    wanted = IPV4_PREFIX if network.version == 4 else IPV6_PREFIX
    if network.prefixlen != wanted or str(network) != value:
        raise PydanticCustomError(Reason.INVALID_FIELD.value, "is not an address prefix")
    return value
