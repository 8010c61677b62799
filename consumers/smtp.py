"""SMTP for the mail worker: one reusable connection per sender, and what a failure means.

A failure is described by an SMTP code or an error class name only: aiosmtplib's
exceptions carry the recipient's address in their arguments, so they are never logged,
stored or re-raised past `classify`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from runtime.settings import Settings


@dataclass(frozen=True, slots=True)
class Failure:
    permanent: bool  # a 5xx to this recipient or this message: it will never be delivered
    error: str  # an SMTP code, or an error class name
    server: bool  # the server or the connection failed, not this recipient


def classify(exc: BaseException) -> Failure:
    """What a failed send means. Only answers to RCPT and DATA concern the recipient; a
    refusal of our greeting, login or sender is the server's or our configuration's, and
    never makes a signature undeliverable."""
    if isinstance(exc, SMTPRecipientsRefused):
        code = exc.recipients[0].code if exc.recipients else 0
        return Failure(500 <= code < 600, str(code), server=False)
    if isinstance(exc, SMTPRecipientRefused | SMTPDataError):
        return Failure(500 <= exc.code < 600, str(exc.code), server=exc.code == 421)
    if isinstance(exc, SMTPResponseException):
        return Failure(False, str(exc.code), server=True)
    if isinstance(exc, ValueError | SMTPNotSupported):  # this message, not the server
        return Failure(False, type(exc).__name__, server=False)
    return Failure(False, type(exc).__name__, server=True)  # refused, reset, timed out, …


class SmtpSession:
    """One connection to the SMTP server, kept open from one email to the next."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: aiosmtplib.SMTP | None = None

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self._settings
        login = bool(s.smtp_username)
        password = s.smtp_password.get_secret_value() if login and s.smtp_password else None
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username if login else None,
            password=password,
            timeout=s.smtp_timeout_s,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",
        )

    async def _connect(self) -> aiosmtplib.SMTP:
        client = self._new_client()
        self._client = client
        await client.connect()  # EHLO, STARTTLS and AUTH as configured
        return client

    async def send(self, message: EmailMessage) -> None:
        client = self._client
        reused = client is not None and client.is_connected
        if client is None or not reused:
            client = await self._connect()
        try:
            await client.send_message(message)
        except SMTPServerDisconnected:
            if not reused:
                raise
            # The server closed a connection left idle: once more, on a new one.
            client = await self._connect()
            await client.send_message(message)

    async def close(self) -> None:
        """QUIT politely if possible; the next send opens a new connection."""
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await asyncio.wait_for(client.quit(), self._settings.smtp_timeout_s)
        except (SMTPException, OSError, TimeoutError):
            client.close()
