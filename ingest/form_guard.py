"""The petition page's form against scripts: a honeypot field and a signed render time.

Two silent tells of a script filling the form, as the UK Parliament's petitions use:
a field that people never see (visually hidden, out of the tab order, hidden from screen
readers) yet a form-filling script fills, and a post that comes sooner after the form was
rendered than a person can type. The render time travels in a hidden field with an HMAC
under a server key, so it cannot be forged or moved back; a form without it (a partner's
own form, a script posting JSON) is not judged by time. Neither tell refuses anything:
the signature is stored with the flag and its sender told what everyone is told.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qsl

from ingest.client_address import derived_key
from schemas.flags import EdgeFlag

HONEYPOT_FIELD = "website"
TOKEN_FIELD = "form_token"  # noqa: S105 - a form field's name, not a secret


class FormGuard:
    def __init__(self, secret: bytes, min_seconds: float) -> None:
        self._key = derived_key(secret, b"form render time v1")
        self._min_seconds = min_seconds

    def _mac(self, campaign: str, rendered: int) -> str:
        message = f"{campaign}:{rendered}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def token(self, campaign: str, now: float | None = None) -> str:
        """The hidden field's value for a form rendered now: `{unix time}.{mac}`."""
        rendered = int(time.time() if now is None else now)
        return f"{rendered}.{self._mac(campaign, rendered)}"

    def _rendered_at(self, campaign: str, token: str) -> int | None:
        stamp, _, mac = token.partition(".")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(campaign, int(stamp)).encode()):
            return None
        return int(stamp)

    def flag(self, body: bytes, campaign: str, now: float | None = None) -> EdgeFlag | None:
        """The flag a form post earns: `honeypot`, `too_fast` (or a forged time), or None."""
        try:
            fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):  # refused as a whole before this is asked
            return None
        if any(name == HONEYPOT_FIELD and value.strip() for name, value in fields):
            return "honeypot"
        tokens = [value for name, value in fields if name == TOKEN_FIELD]
        if not tokens:
            return None
        rendered = self._rendered_at(campaign, tokens[0]) if len(tokens) == 1 else None
        now = time.time() if now is None else now
        if rendered is None or now - rendered < self._min_seconds:
            return "too_fast"
        return None
