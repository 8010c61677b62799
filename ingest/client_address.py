"""Who is asking: the client's address behind the proxies we trust, and what of it we keep.

`X-Forwarded-For` is anyone's to write; only a proxy of ours appends the truth to it. So
it is read only when the connection comes from a trusted proxy (SIGNATURES_TRUSTED_PROXIES),
right to left: each trusted hop hands us on to the address it saw, and the first address
that is not one of ours is the client. With no trusted proxies the header is ignored.

The address is personal data. The rate limiter keys on a keyed hash of it, and a signature
keeps only its prefix (IPv4 /24, IPv6 /48) and a keyed hash of the full address: enough to
see a flood from one network and to tell one machine from many, not enough to name one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from functools import lru_cache
from typing import Any

from runtime.abuse_settings import Network
from schemas.flags import IPV4_PREFIX, IPV6_PREFIX

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCOPE_KEY = "signatures.client_address"  # the answer, kept in the request's scope
_IPV6_SUBJECT = 64  # one IPv6 subscriber gets a /64 at least: limit them as one
# Each request needs its address's prefix and keyed hashes (15 µs without a cache); a
# surge brings the same addresses again and again, a flood from many gets the same cost.
_CACHED = 65_536


def derived_key(secret: bytes, purpose: bytes) -> bytes:
    """A key for one purpose, derived from the deployment's secret (the dedupe secret,
    the same on every API process), so that no key is used for two things."""
    return hmac.new(secret, b"signatures " + purpose, hashlib.sha256).digest()


def _parsed(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddresses:
    """The client's address of a request, its prefix, and keyed hashes of it."""

    def __init__(self, trusted: tuple[Network, ...], secret: bytes) -> None:
        self._trusted = trusted
        self._hash_key = derived_key(secret, b"client address v1")
        self._hashes = lru_cache(maxsize=_CACHED)(self._hash)

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)

    def address(self, scope: Any) -> Address | None:
        """The client's address (None for a connection without one, such as a socket)."""
        if _SCOPE_KEY in scope:
            found: Address | None = scope[_SCOPE_KEY]
            return found
        found = self._resolve(scope)
        scope[_SCOPE_KEY] = found
        return found

    def _resolve(self, scope: Any) -> Address | None:
        peer = scope.get("client")
        address = _parsed(peer[0]) if peer else None
        if address is None or not self._trusted or not self._is_trusted(address):
            return address
        hops = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for")
        for hop in reversed(hops.decode("latin-1").split(",")):
            previous = _parsed(hop)
            if previous is None:  # garbage from a proxy of ours: the last good hop stands
                return address
            address = previous
            if not self._is_trusted(address):
                return address
        return address  # every hop was ours: the furthest one is the client

    @staticmethod
    @lru_cache(maxsize=_CACHED)
    def prefix(address: Address) -> str:
        """The address's network as a signature stores it: `203.0.113.0/24`."""
        length = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
        return str(ipaddress.ip_network(f"{address}/{length}", strict=False))

    def hash(self, address: Address) -> str:
        """A keyed hash of the full address, 32 hex digits: equal for the same address."""
        return self._hashes(address)

    def _hash(self, address: Address) -> str:
        return hmac.new(self._hash_key, address.packed, hashlib.sha256).hexdigest()[:32]

    def limit_subject(self, address: Address) -> str:
        """What the per-client rate limit counts: the address, or an IPv6 client's /64,
        as a keyed hash (the limiter's storage never holds an address)."""
        if address.version == 6:
            network = ipaddress.ip_network(f"{address}/{_IPV6_SUBJECT}", strict=False)
            return self.hash(network.network_address)
        return self.hash(address)
