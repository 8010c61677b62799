"""What the API adds to a web signature that only the HTTP request shows.

The persist worker decides most flags from the data; these facts it cannot see, so they
travel with the submission on Kafka, in fields that no client can set over HTTP (the
edge accepts only the signer's own fields): the sender's address prefix and a keyed hash
of the address, and the flag the page's form earned (honeypot, too fast). Partners'
signatures carry none of it: their requests come from the partner's server, not the
signer.
"""

from __future__ import annotations

import secrets
from typing import Any

from ingest.client_address import ClientAddresses
from ingest.form_guard import FormGuard
from runtime.abuse_settings import networks
from runtime.settings import Settings
from schemas.submission import Submission

_PROCESS_SECRET = secrets.token_bytes(32)


def client_addresses(settings: Settings) -> ClientAddresses:
    return ClientAddresses(networks(settings.trusted_proxies), _secret(settings))


def form_guard(settings: Settings) -> FormGuard:
    return FormGuard(_secret(settings), settings.form_min_seconds)


def _secret(settings: Settings) -> bytes:
    """The secret every API process shares (the dedupe secret); without one, as in an app
    built for a test, one of this process: its form tokens then verify only here."""
    if settings.dedupe_secret is not None:
        return settings.dedupe_secret.get_secret_value().encode()
    return _PROCESS_SECRET


class EdgeFacts:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.flags
        self.addresses = client_addresses(settings)
        self.forms = form_guard(settings)

    def stamp(self, submission: Submission, scope: Any, form: bytes | None) -> Submission:
        """The submission with the request's facts; `form` is the body of a form post."""
        if not self.enabled or submission.source != "web" or scope is None:
            return submission
        facts: dict[str, str] = {}
        address = self.addresses.address(scope)
        if address is not None:
            facts["client_prefix"] = self.addresses.prefix(address)
            facts["client_hash"] = self.addresses.hash(address)
        if form is not None and (flag := self.forms.flag(form, submission.campaign)):
            facts["edge_flag"] = flag
        # the values are the validators' own forms already: no second validation
        return submission.model_copy(update=facts) if facts else submission
